# Sourced by scripts that run what cargo built. `built_executables` reads cargo's
# `--message-format=json-render-diagnostics` output on stdin and prints "<target name> <path>" for
# each executable, wherever CARGO_TARGET_DIR points; `built_path NAME` then picks one out of
# "$built", failing with the list when cargo reported none.

built_executables() {
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])
'
}

built_path() {
  local path
  path=$(awk -v name="$1" '$1 == name { print $2 }' <<<"$built")
  if [ ! -x "$path" ]; then
    echo "error: cargo reported no executable $1:" >&2
    echo "$built" >&2
    return 1
  fi
  echo "$path"
}
