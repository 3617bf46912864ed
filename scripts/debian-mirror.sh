#!/usr/bin/env bash
# Print the Debian mirror this machine's apt uses, for tools that need a
# mirror URL of their own (debootstrap): the first enabled `deb` source
# with the component `main` whose suite is SUITE (default bookworm), else
# the first one whose suite is not a -security or -updates suite.  Read
# from /etc/apt/sources.list and /etc/apt/sources.list.d/*.list (one-line
# format) and /etc/apt/sources.list.d/*.sources (deb822), in apt's order.
#
# Usage: scripts/debian-mirror.sh [SUITE]
#
# $DEBIAN_MIRROR, when set, is printed instead.  Fails, naming the files it
# read, when apt has no such source.
set -euo pipefail

suite="${1:-bookworm}"
if [ -n "${DEBIAN_MIRROR:-}" ]; then
    echo "$DEBIAN_MIRROR"
    exit 0
fi

etc="${APT_ETC:-/etc/apt}"
files=()
[ -f "$etc/sources.list" ] && files+=("$etc/sources.list")
for f in "$etc"/sources.list.d/*.list "$etc"/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
done
[ "${#files[@]}" -gt 0 ] || { echo "debian-mirror: no apt sources under $etc" >&2; exit 1; }

# One "URI SUITE COMPONENTS..." line per enabled deb source, in file order.
sources() {
    local f
    for f in "${files[@]}"; do
        case "$f" in
            *.sources)
                # deb822: paragraphs separated by blank lines; fields may
                # continue on indented lines; '#' lines are comments.
                awk '
                    function flush() {
                        if (types ~ /(^| )deb( |$)/ && tolower(enabled) != "no")
                            for (u = 1; u <= nu; u++)
                                for (s = 1; s <= ns; s++)
                                    print uris[u], suites[s], comps
                        types = ""; enabled = ""; comps = ""; nu = 0; ns = 0; field = ""
                    }
                    /^[ \t]*#/ { next }
                    /^[ \t]*$/ { flush(); next }
                    /^[ \t]/ { val = $0; key = field }
                    /^[^ \t]/ {
                        key = tolower(substr($0, 1, index($0, ":") - 1)); field = key
                        val = substr($0, index($0, ":") + 1)
                    }
                    {
                        gsub(/^[ \t]+|[ \t]+$/, "", val)
                        if (key == "types") types = types " " val
                        else if (key == "enabled") enabled = val
                        else if (key == "components") comps = comps " " val
                        else if (key == "uris") nu += addall(uris, nu, val)
                        else if (key == "suites") ns += addall(suites, ns, val)
                    }
                    function addall(arr, n, v,    parts, k, c) {
                        c = split(v, parts, /[ \t]+/)
                        for (k = 1; k <= c; k++) arr[n + k] = parts[k]
                        return c
                    }
                    END { flush() }
                ' "$f"
                ;;
            *)
                # One-line: deb [opt=val ...] URI SUITE COMPONENT...
                sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && NF >= 4 {
                    line = $2 " " $3
                    for (i = 4; i <= NF; i++) line = line " " $i
                    print line
                }'
                ;;
        esac
    done
}

all="$(sources)"
has_main() { awk '{ for (i = 3; i <= NF; i++) if ($i == "main") { print; break } }'; }
uri="$(has_main <<<"$all" | awk -v s="$suite" '$2 == s { print $1; exit }')"
if [ -z "$uri" ]; then
    uri="$(has_main <<<"$all" | awk '$2 !~ /-(security|updates|backports)$/ && $2 !~ /\// { print $1; exit }')"
fi
[ -n "$uri" ] || {
    echo "debian-mirror: no enabled 'deb' source with component main in: ${files[*]} (set DEBIAN_MIRROR)" >&2
    exit 1
}
echo "${uri%/}"
