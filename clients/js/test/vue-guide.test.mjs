// The chat app's integration guide, unchanged: a component wired to useEnhancedStreaming exactly as
// the guide shows (onMetadata reading `meta.type`, a bar whose width is `progress.percentageComplete`,
// the rate from `progress.tokensPerSecond`), rendered by Vue's own runtime (a renderer into plain
// objects, Node has no DOM) against the real proxy in front of a mock sse-starlette backend.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createRenderer, defineComponent, h, ref } from 'vue';
import { useEnhancedStreaming } from '../dist/vue.js';
import { configFile, skipProxy, startProxy } from './helpers/proxy.mjs';
import { starletteUpstream } from './helpers/upstream.mjs';

const TOKENS = Array.from({ length: 30 }, (_, i) => `g${i} `);

/** The guide's component; `url` and `token` are its props. */
const GuideChat = defineComponent({
  props: { url: String, token: String },
  setup(props) {
    const showThinkingIndicator = ref(false);
    const { isStreaming, streamContent, progress, startStreaming } = useEnhancedStreaming({
      enableBatching: true,
      enableProgress: true,
      enableReconnection: true,
      onMetadata: (meta) => {
        if (meta.type === 'thinking') showThinkingIndicator.value = true;
      },
    });
    const finished = startStreaming(props.url, { Authorization: `Bearer ${props.token}` });
    return { showThinkingIndicator, isStreaming, streamContent, progress, finished };
  },
  template: `
    <div class="chat">
      <div v-if="showThinkingIndicator" class="thinking">Thinking…</div>
      <div v-if="progress" class="progress">
        <div class="bar" :style="{ width: progress.percentageComplete + '%' }"></div>
        <span class="rate">{{ progress.tokensPerSecond }} tokens/s</span>
      </div>
      <div class="answer">{{ streamContent }}</div>
    </div>`,
});

/** A Vue renderer into plain objects; `widths` records every width the bar was given. */
function objectRenderer() {
  const widths = [];
  const classes = new Set();
  const node = (type, text = '') => ({ type, text, props: {}, children: [], parent: null });
  const renderer = createRenderer({
    createElement: (type) => node(type),
    createText: (text) => node('#text', text),
    createComment: (text) => node('#comment', text),
    setText: (n, text) => (n.text = text),
    setElementText: (n, text) => {
      n.children = [node('#text', text)];
    },
    insert: (child, parent, anchor) => {
      if (child.parent) child.parent.children.splice(child.parent.children.indexOf(child), 1);
      const i = anchor ? parent.children.indexOf(anchor) : -1;
      if (i < 0) parent.children.push(child);
      else parent.children.splice(i, 0, child);
      child.parent = parent;
    },
    remove: (child) => {
      if (!child.parent) return;
      child.parent.children.splice(child.parent.children.indexOf(child), 1);
      child.parent = null;
    },
    parentNode: (n) => n.parent,
    nextSibling: (n) => (n.parent ? (n.parent.children[n.parent.children.indexOf(n) + 1] ?? null) : null),
    patchProp: (el, key, _prev, next) => {
      el.props[key] = next;
      if (key === 'class') classes.add(next);
      if (key === 'style' && el.props.class === 'bar') widths.push(next?.width);
    },
  });
  return { renderer, widths, classes };
}

const find = (n, cls) => {
  if (n.props?.class === cls) return n;
  for (const c of n.children ?? []) {
    const f = find(c, cls);
    if (f) return f;
  }
  return null;
};
const textOf = (n) => (n.type === '#text' ? n.text : n.children.map(textOf).join(''));

test('the guide component shows the thinking indicator, a real bar width and the final text', { skip: skipProxy }, async (t) => {
  const upstream = await starletteUpstream({ tokens: TOKENS, intervalMs: 10 });
  const config = configFile(`[upstream]
url = "${upstream.url}"

[[stream]]
path = "/api/question/stream"
token_path = "/content"
`);
  const proxy = await startProxy(['--config', config, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0']);
  t.after(() => Promise.all([proxy.stop(), upstream.close()]));

  const { renderer, widths, classes } = objectRenderer();
  const root = { type: 'root', props: {}, children: [], parent: null };
  const app = renderer.createApp({
    render: () => h(GuideChat, { ref: 'chat', url: `${proxy.url}/api/question/stream?question=guide`, token: 't0k' }),
  });
  const vm = app.mount(root);
  t.after(() => app.unmount());
  const result = await vm.$refs.chat.finished;
  assert.equal(result.reason, 'done');
  // The last render (streamContent is flushed on a timer without requestAnimationFrame).
  await new Promise((resolve) => setTimeout(resolve, 50));

  assert.ok(classes.has('thinking'), 'the thinking indicator was shown');
  assert.equal(textOf(find(root, 'thinking')), 'Thinking…');
  assert.ok(widths.length > 0, 'the bar was drawn');
  for (const w of widths) assert.match(w, /^\d+(\.\d+)?%$/, `bar width ${w}`);
  assert.equal(widths.at(-1), '100%');
  assert.deepEqual(widths.map(parseFloat), [...widths.map(parseFloat)].sort((a, b) => a - b), 'the bar never shrinks');
  assert.match(textOf(find(root, 'rate')), /^\d+(\.\d+)? tokens\/s$/);
  assert.equal(textOf(find(root, 'answer')), TOKENS.join(''));
  assert.equal(upstream.requests[0].headers.authorization, 'Bearer t0k');
});
