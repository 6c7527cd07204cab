// Minimal Vite app mounting EnhancedStreamingDemo.vue. The page and the proxy share an origin:
// `npm run dev` / `npm run preview` forward the stream and the proxy's own routes to sse-proxy at
// $SSE_PROXY_URL (default http://127.0.0.1:8080, e.g. `sse-proxy demo`); a build (`dist/`) is
// served by whatever serves the app, in front of the same proxy (nginx: deploy/nginx.conf).
import { fileURLToPath } from 'node:url';
import vue from '@vitejs/plugin-vue';
import { defineConfig } from 'vite';

const client = fileURLToPath(new URL('../..', import.meta.url));
const target = process.env.SSE_PROXY_URL ?? 'http://127.0.0.1:8080';
const proxy = { '/api': { target }, '/_sse-proxy': { target } };

export default defineConfig({
  base: './',
  plugins: [vue()],
  resolve: {
    // What `npm install @sse-proxy/client` would give, taken from this repository.
    alias: [
      { find: '@sse-proxy/client/EnhancedStreamingDemo.vue', replacement: `${client}components/EnhancedStreamingDemo.vue` },
      { find: '@sse-proxy/client/vue', replacement: `${client}dist/vue.js` },
    ],
    // One Vue for the app and the composable (clients/js has its own copy for its tests).
    dedupe: ['vue'],
  },
  server: { proxy, fs: { allow: [client] } },
  preview: { proxy },
});
