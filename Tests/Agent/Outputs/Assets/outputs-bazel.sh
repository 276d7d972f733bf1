#!/usr/bin/env bash
# A stand-in for bazel in the outputs tests (bash + coreutils only). Writes its arguments to ./args.txt, one per line.
# For `build` with --build_event_json_file=FILE it writes a BEP file in bazel 4.2.3's JSON-lines shape naming every
# file below ./execroot/ws/bazel-out/<config>/bin/ as a top-level output (one target per file; the target's output
# group references a named set that references the set holding the file, as bazel nests them), plus events jbazel
# and the agent must skip. Exits with the code in ./exit-code (default 0).
set -u
bep=""
verb=""
for arg in "$@"; do
  case "$arg" in
    --build_event_json_file=*) bep="${arg#--build_event_json_file=}" ;;
    -*) ;;
    *) if [ -z "$verb" ]; then verb="$arg"; fi ;;
  esac
done
printf '%s\n' "$@" > args.txt
code=0
if [ -f exit-code ]; then code=$(cat exit-code); fi
if [ "$verb" = build ] && [ -n "$bep" ]; then
  root="$(pwd -P)/execroot/ws"
  {
    printf '{"id":{"started":{"uuid":"fake"}},"children":[{"progress":{}}],"started":{"command":"build"}}\n'
    printf '{"id":{"progress":{}},"progress":{"stderr":"Analyzing: fake targets\\n"}}\n'
    n=0
    while IFS= read -r -d '' f; do
      rel="${f#"$root"/}"
      cfg="${rel#bazel-out/}"
      cfg="${cfg%%/*}"
      name="${rel#bazel-out/"$cfg"/bin/}"
      printf '{"id":{"namedSet":{"id":"%d"}},"namedSetOfFiles":{"files":[{"name":"%s","uri":"file://%s","pathPrefix":["bazel-out","%s","bin"]}]}}\n' "$n" "$name" "$f" "$cfg"
      printf '{"id":{"namedSet":{"id":"p%d"}},"namedSetOfFiles":{"fileSets":[{"id":"%d"}]}}\n' "$n" "$n"
      printf '{"id":{"targetCompleted":{"label":"//t:%d"}},"completed":{"success":true,"outputGroup":[{"name":"default","fileSets":[{"id":"p%d"}]}]}}\n' "$n" "$n"
      n=$((n + 1))
    done < <(find "$root/bazel-out" -path '*/bin/*' -type f -print0 2>/dev/null | sort -z)
    printf '{"id":{"buildFinished":{}},"finished":{"exitCode":{"name":"SUCCESS"}},"lastMessage":true}\n'
  } > "$bep"
fi
exit "$code"
