#!/usr/bin/env bash
# Regenerates the format-2 golden vault. Run once, by hand, when format 2 was frozen; never again:
# later versions must open the checked-in files exactly as they are. (The record vectors in
# v2/records/ are written by `cargo test -p carnet-core write_vectors_v2 -- --ignored`.)
#   usage: tests/golden/make-v2.sh target/debug/carnet
set -euo pipefail
bin=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
out="$here/v2"
rm -rf "$out/vault" "$out/expected" "$out"/*.txt "$out/backup.carnet"
mkdir -p "$out/expected"
state=$(mktemp -d)
trap 'rm -rf "$state"' EXIT
umask 077
printf 'golden vault passphrase v2\n' > "$out/passphrase.txt"
export CARNET_VAULT="$out/vault" CARNET_PASSPHRASE_FILE="$out/passphrase.txt" CARNET_STATE_DIR="$state"
"$bin" -q init --kdf-memory-mib 8 --kdf-iterations 1 --kdf-parallelism 1 --recovery-key-out "$out/recovery-key.txt" > /dev/null
printf 'golden nurse passphrase v2\n' > "$out/nurse-passphrase.txt"
"$bin" -q user add nurse --role clinician --new-passphrase-file "$out/nurse-passphrase.txt" > /dev/null
"$bin" -q patient add G-001 --name "Éloïse Golden" --birth-date 1970-01-01
"$bin" -q patient add G-002
n1=$(printf 'first note\n' | "$bin" note add G-001 --author "Dr Gold" --kind consultation)
n2=$(printf '\x00\x01\x02\xff\xfe binary' | "$bin" note add G-001)
# The nurse amends the doctor's note: the version says who wrote it.
printf 'first note, amended by the nurse\n' | CARNET_PASSPHRASE_FILE="$out/nurse-passphrase.txt" "$bin" --user nurse note amend G-001 "$n1" > /dev/null
n3=$(printf 'Ünïcödé ✓' | "$bin" note add G-002 --kind "lettre")
printf '{"patient_id":"G-003","name":"Imported Person","birth_date":"2000-02-29","author":"Dr Import","kind":"lab","created_at":"2019-04-05T06:07:08Z","body":"imported body"}\n' > "$out/import.jsonl"
"$bin" -q import "$out/import.jsonl" > /dev/null
rm "$out/import.jsonl"
"$bin" -q search note > /dev/null
# A second administrator added and revoked: registry key version 2, keyring key version 2, a
# new recovery key; then a passphrase change (a revocation of the old passphrase), a master and
# a patient-key rotation.
printf 'a passing administrator\n' > "$state/temp-pass"
"$bin" -q user add temp --role admin --new-passphrase-file "$state/temp-pass" > /dev/null
"$bin" -q user remove temp --recovery-key-out "$state/recovery-key.txt" > /dev/null
mv "$state/recovery-key.txt" "$out/recovery-key.txt"
"$bin" -q key change-passphrase --new-passphrase-file "$out/passphrase.txt" > /dev/null
"$bin" -q key rotate-master > /dev/null
"$bin" -q key rotate-patient G-001 > /dev/null
"$bin" patient list --json > "$out/expected/patient-list.json"
for p in G-001 G-002 G-003; do "$bin" note list "$p" --json > "$out/expected/notes-$p.json"; done
for pn in "G-001 $n1" "G-001 $n2" "G-002 $n3"; do
  set -- $pn
  "$bin" note history "$1" "$2" --json > "$out/expected/history-$1-$2.json"
done
"$bin" key status --json > "$out/expected/key-status.json"
"$bin" verify --json > "$out/expected/verify.json"
"$bin" -q backup "$out/backup.carnet" > /dev/null
rm -f "$out/vault/carnet.lock"
du -sh "$out"
