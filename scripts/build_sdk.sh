#!/usr/bin/env bash
# Builds the Java stand-in SDK into build/sdk/datahub-sdk-standin.jar (JDK only, no Maven).
# Does nothing when the jar is newer than every source, so callers may run it freely.
# Prints the jar's absolute path as its last line.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src_dir="$repo_root/sdk-standin/src/main/java"
out_dir="$repo_root/build/sdk"
jar_path="$out_dir/datahub-sdk-standin.jar"

# Honour JAVA_HOME when set, as the JVM started by JPype may come from there.
if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/javac" ]]; then
    javac="$JAVA_HOME/bin/javac"
    jar="$JAVA_HOME/bin/jar"
else
    javac="$(command -v javac || true)"
    jar="$(command -v jar || true)"
fi
if [[ -z "$javac" || -z "$jar" ]]; then
    echo "build_sdk.sh: javac and jar (JDK 17+) are required" >&2
    exit 1
fi

needs_build() {
    [[ -f "$jar_path" ]] || return 0
    # Directories count too: adding or deleting a source changes its folder's mtime.
    # This script counts as well, since it holds the compiler flags.
    [[ -n "$(find "$src_dir" "${BASH_SOURCE[0]}" -newer "$jar_path" -print -quit)" ]]
}

if needs_build; then
    mkdir -p "$out_dir"
    # Build in a private folder and move the jar into place in one step, so concurrent
    # callers never see (or load) a half-written jar.
    work_dir="$(mktemp -d "$out_dir/.build.XXXXXX")"
    trap 'rm -rf "$work_dir"' EXIT
    # The jar gets the build's start time, so a source edited during the build is
    # still newer than the jar and triggers the next build.
    touch "$work_dir/started"
    mapfile -t sources < <(find "$src_dir" -name '*.java' | sort)
    if [[ ${#sources[@]} -eq 0 ]]; then
        echo "build_sdk.sh: no Java sources under $src_dir" >&2
        exit 1
    fi
    "$javac" --release 17 -encoding UTF-8 -Xlint:all -d "$work_dir/classes" "${sources[@]}"
    "$jar" --create --file "$work_dir/sdk.jar" -C "$work_dir/classes" .
    touch -r "$work_dir/started" "$work_dir/sdk.jar"
    mv -f "$work_dir/sdk.jar" "$jar_path"
fi

echo "$jar_path"
