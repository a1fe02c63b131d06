#!/usr/bin/env bash
# Installs dcloud-fs for the current user:
#   $PREFIX/bin/dcloud-fs                    the program (built here unless given one)
#   $PREFIX/bin/mount.dcloud-fs              the mount(8) helper, for /etc/fstab
#   $XDG_CONFIG_HOME/systemd/user/dcloud-fs.service   the systemd user service
#   $XDG_CONFIG_HOME/dcloud-fs/config.toml   from contrib/config.toml.template, mode 0600
#   $XDG_CONFIG_HOME/dcloud-fs/key           a new key (dcloud-fs keygen)
#   shell completions and a man page, if this dcloud-fs can make them.
# PREFIX defaults to ~/.local, XDG_CONFIG_HOME to ~/.config. Running it again updates
# the program, the helper and the unit, and never touches an existing config or key.
# scripts/uninstall.sh undoes it.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/install.sh [--binary PATH] [--prefix DIR]
  --binary PATH   install this dcloud-fs (also $DCLOUD_BINARY) instead of building
                  one with `cargo build --release --locked`
  --prefix DIR    install under DIR/bin (also $PREFIX; default ~/.local)
EOF
}

say() { printf '%s\n' "$*"; }
fail() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ -n "${HOME:-}" ] || fail "HOME is not set"
binary=${DCLOUD_BINARY:-}
prefix=${PREFIX:-$HOME/.local}
while [ $# -gt 0 ]; do
    case $1 in
    --binary)
        [ $# -ge 2 ] || fail "--binary needs a path"
        binary=$2
        shift 2
        ;;
    --binary=*) binary=${1#*=} && shift ;;
    --prefix)
        [ $# -ge 2 ] || fail "--prefix needs a folder"
        prefix=$2
        shift 2
        ;;
    --prefix=*) prefix=${1#*=} && shift ;;
    -h | --help) usage && exit 0 ;;
    *) usage >&2 && exit 2 ;;
    esac
done

prefix=$(realpath -m -- "$prefix")
case $prefix in
*[[:space:]]*) fail "the prefix '$prefix' has white space in it, which the unit file can't hold" ;;
esac
bindir=$prefix/bin
config_home=${XDG_CONFIG_HOME:-}
[[ $config_home == /* ]] || config_home=$HOME/.config
config_dir=$config_home/dcloud-fs
unit_dir=$config_home/systemd/user
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# place SRC DEST MODE: installs SRC as DEST unless DEST has the same bytes already.
# A new file is renamed into place, so a running dcloud-fs is never written over.
place() {
    local src=$1 dest=$2 mode=$3
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        chmod "$mode" "$dest"
        say "up to date: $dest"
    else
        mkdir -p "$(dirname "$dest")"
        install -m "$mode" "$src" "$dest.new.$$"
        mv -f "$dest.new.$$" "$dest"
        say "installed $dest"
    fi
}

# The program.
if [ -z "$binary" ]; then
    command -v cargo >/dev/null || fail "cargo not found: install Rust, or pass --binary PATH"
    say "building the release binary (cargo build --release --locked)..."
    (cd "$repo" && cargo build --release --locked)
    binary=$repo/target/release/dcloud-fs
fi
if ! [ -f "$binary" ] || ! [ -x "$binary" ]; then
    fail "$binary is not an executable file"
fi
"$binary" --version >/dev/null || fail "$binary --version failed: is it dcloud-fs?"
place "$binary" "$bindir/dcloud-fs" 0755
dcloud=$bindir/dcloud-fs
place "$repo/scripts/mount.dcloud-fs" "$bindir/mount.dcloud-fs" 0755

# The systemd user unit, which runs %h/.local/bin/dcloud-fs: pointed at $bindir if the
# program is elsewhere ('%' doubled: it starts a specifier in unit files).
unit=$scratch/dcloud-fs.service
if [ "$bindir" = "$(realpath -m -- "$HOME/.local/bin")" ]; then
    cp "$repo/systemd/dcloud-fs.service" "$unit"
else
    target=${bindir//%/%%}
    target=$(printf '%s' "$target" | sed 's/[\\&|]/\\&/g')
    sed "/^Exec/s|%h/\\.local/bin/|$target/|g" "$repo/systemd/dcloud-fs.service" >"$unit"
fi
place "$unit" "$unit_dir/dcloud-fs.service" 0644

# The config file: created once, never overwritten (it holds the token).
config=$config_dir/config.toml
if [ -e "$config" ]; then
    say "kept the config file $config (left as it was)"
else
    if ! [ -d "$config_dir" ]; then
        mkdir -p "$config_home"
        mkdir -m 0700 "$config_dir"
    fi
    install -m 0600 "$repo/contrib/config.toml.template" "$config"
    say "created $config (mode 0600) from contrib/config.toml.template"
fi

# The key: made once; keygen itself refuses to overwrite one.
key=${DCLOUD_KEY_FILE:-$config_dir/key}
if [ -e "$key" ]; then
    say "kept the key $key (left as it was)"
elif output=$("$dcloud" keygen 2>&1); then
    say "$output"
elif [[ $output == *"already exists"* ]]; then
    say "kept the key: ${output#dcloud-fs: }"
else
    fail "dcloud-fs keygen failed: $output"
fi

# Completions and the man page, from the program if it can make them.
if "$dcloud" completions --help >/dev/null 2>&1; then
    for shell in bash zsh fish; do
        case $shell in
        bash) dest=$prefix/share/bash-completion/completions/dcloud-fs ;;
        zsh) dest=$prefix/share/zsh/site-functions/_dcloud-fs ;;
        fish) dest=$prefix/share/fish/vendor_completions.d/dcloud-fs.fish ;;
        esac
        "$dcloud" completions "$shell" >"$scratch/completion" ||
            fail "dcloud-fs completions $shell failed"
        place "$scratch/completion" "$dest" 0644
    done
else
    say "no shell completions: this dcloud-fs has no 'completions' command"
fi
if "$dcloud" man --help >/dev/null 2>&1; then
    "$dcloud" man >"$scratch/dcloud-fs.1" || fail "dcloud-fs man failed"
    [ -s "$scratch/dcloud-fs.1" ] || fail "dcloud-fs man wrote nothing"
    place "$scratch/dcloud-fs.1" "$prefix/share/man/man1/dcloud-fs.1" 0644
else
    say "no man page: this dcloud-fs has no 'man' command"
fi

# Tell the user's systemd about the unit, if it is reachable from here.
if command -v systemctl >/dev/null && systemctl --user show-environment >/dev/null 2>&1; then
    if systemctl --user daemon-reload; then
        say "reloaded the systemd user manager"
        if systemctl --user is-active --quiet dcloud-fs; then
            say "the service is running the old program: systemctl --user restart dcloud-fs"
        fi
    fi
else
    say "no systemd user manager reachable from here: in your session, run systemctl --user daemon-reload"
fi

cat <<EOF

Next:
  1. Put your bot's token and guild id in $config
     (leave them out to use the local store, in ~/.local/share/dcloud-fs/local).
  2. Check the set-up:           dcloud-fs doctor
  3. Mount it at every login:    systemctl --user enable --now dcloud-fs
     (at ~/discord, or the config's mount_point; logs: journalctl --user -u dcloud-fs)
Back up the key ($key): without it your files can't be read.
For /etc/fstab (see README): sudo ln -s $bindir/mount.dcloud-fs /sbin/mount.fuse.dcloud-fs
EOF
case ":$PATH:" in
*":$bindir:"*) ;;
*) say "$bindir is not on your PATH: add it (e.g. in ~/.profile)." ;;
esac
