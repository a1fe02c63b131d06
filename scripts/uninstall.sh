#!/usr/bin/env bash
# Undoes scripts/install.sh: stops and disables the service (if the user's systemd is
# reachable), then removes the program, the mount helper, the unit, the completions
# and the man page. Keeps the config file and the key (the key is the only way to read
# your files) unless --purge, which also deletes $XDG_CONFIG_HOME/dcloud-fs (config and
# key) and $XDG_CACHE_HOME/dcloud-fs (index caches, logs, spool), after asking. The
# files in your store, Discord's or the local one, are never touched.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/uninstall.sh [--prefix DIR] [--purge [--yes]]
  --prefix DIR   where install.sh put it (also $PREFIX; default ~/.local)
  --purge        also delete the config file, the key and the caches
  --yes          don't ask before --purge deletes them
EOF
}

say() { printf '%s\n' "$*"; }
fail() {
    printf 'uninstall.sh: %s\n' "$*" >&2
    exit 1
}

[ -n "${HOME:-}" ] || fail "HOME is not set"
prefix=${PREFIX:-$HOME/.local}
purge=false
yes=false
while [ $# -gt 0 ]; do
    case $1 in
    --prefix)
        [ $# -ge 2 ] || fail "--prefix needs a folder"
        prefix=$2
        shift 2
        ;;
    --prefix=*) prefix=${1#*=} && shift ;;
    --purge) purge=true && shift ;;
    --yes | -y) yes=true && shift ;;
    -h | --help) usage && exit 0 ;;
    *) usage >&2 && exit 2 ;;
    esac
done

prefix=$(realpath -m -- "$prefix")
bindir=$prefix/bin
config_home=${XDG_CONFIG_HOME:-}
[[ $config_home == /* ]] || config_home=$HOME/.config
cache_home=${XDG_CACHE_HOME:-}
[[ $cache_home == /* ]] || cache_home=$HOME/.cache
config_dir=$config_home/dcloud-fs
cache_dir=$cache_home/dcloud-fs
unit=$config_home/systemd/user/dcloud-fs.service

if $purge && ! $yes; then
    [ -t 0 ] || fail "--purge deletes your key and config: confirm with --yes, or run it at a terminal"
    printf 'Delete %s (your config and key: without the key your encrypted files can'"'"'t be read) and %s? [y/N] ' \
        "$config_dir" "$cache_dir"
    read -r answer
    [[ $answer == [yY]* ]] || fail "nothing removed"
fi

# Stop the service first: stopping uploads the files still open in the mount.
manager=false
if command -v systemctl >/dev/null && systemctl --user show-environment >/dev/null 2>&1; then
    manager=true
    if [ -e "$unit" ]; then
        systemctl --user disable --now dcloud-fs.service || say "could not stop or disable the service"
    fi
fi

for file in \
    "$bindir/dcloud-fs" \
    "$bindir/mount.dcloud-fs" \
    "$unit" \
    "$prefix/share/bash-completion/completions/dcloud-fs" \
    "$prefix/share/zsh/site-functions/_dcloud-fs" \
    "$prefix/share/fish/vendor_completions.d/dcloud-fs.fish" \
    "$prefix/share/man/man1/dcloud-fs.1"; do
    if [ -e "$file" ] || [ -L "$file" ]; then
        rm -f -- "$file"
        say "removed $file"
    fi
done
if $manager; then
    systemctl --user daemon-reload || true
fi
link=/sbin/mount.fuse.dcloud-fs
if [ -L "$link" ] && [ "$(readlink -- "$link")" = "$bindir/mount.dcloud-fs" ]; then
    say "$link still points to the removed helper: sudo rm $link"
fi

if $purge; then
    for dir in "$config_dir" "$cache_dir"; do
        if [ -e "$dir" ]; then
            rm -rf -- "$dir"
            say "removed $dir"
        fi
    done
    if [ -n "${DCLOUD_KEY_FILE:-}" ] && [ -e "$DCLOUD_KEY_FILE" ]; then
        say "kept the key in DCLOUD_KEY_FILE ($DCLOUD_KEY_FILE): delete it yourself if you mean to"
    fi
else
    for file in "$config_dir/config.toml" "${DCLOUD_KEY_FILE:-$config_dir/key}"; do
        if [ -e "$file" ]; then
            say "kept $file (--purge deletes it)"
        fi
    done
fi
data=${XDG_DATA_HOME:-}
[[ $data == /* ]] || data=$HOME/.local/share
if [ -d "$data/dcloud-fs" ]; then
    say "kept the local store and its files in $data/dcloud-fs"
fi
