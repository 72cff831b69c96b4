#!/usr/bin/env bash
# Regenerates the format-1 golden vault. Run once, by hand, when format 1 was frozen; never again:
# later versions must open the checked-in files exactly as they are.
#   usage: tests/golden/make-v1.sh target/debug/carnet
set -euo pipefail
bin=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
out="$here/v1"
rm -rf "$out"
mkdir -p "$out/expected"
printf 'golden vault passphrase v1\n' > "$out/passphrase.txt"
export CARNET_VAULT="$out/vault" CARNET_PASSPHRASE_FILE="$out/passphrase.txt"
"$bin" -q init --kdf-memory-mib 8 --kdf-iterations 1 --kdf-parallelism 1 --recovery-key-out "$out/recovery-key.txt" > /dev/null
printf 'golden nurse passphrase\n' > "$out/nurse-passphrase.txt"
"$bin" -q user add nurse --role clinician --new-passphrase-file "$out/nurse-passphrase.txt" > /dev/null
"$bin" -q patient add G-001 --name "Éloïse Golden" --birth-date 1970-01-01
"$bin" -q patient add G-002
n1=$(printf 'first note\n' | "$bin" note add G-001 --author "Dr Gold" --kind consultation)
n2=$(printf '\x00\x01\x02\xff\xfe binary' | "$bin" note add G-001)
printf 'first note, amended\n' | "$bin" note amend G-001 "$n1" --author "Dr Silver" > /dev/null
n3=$(printf 'Ünïcödé ✓' | "$bin" note add G-002 --kind "lettre")
printf '{"patient_id":"G-003","name":"Imported Person","birth_date":"2000-02-29","author":"Dr Import","kind":"lab","created_at":"2019-04-05T06:07:08Z","body":"imported body"}\n' > "$out/import.jsonl"
"$bin" -q import "$out/import.jsonl" > /dev/null
rm "$out/import.jsonl"
# Rotations, so that the golden vault exercises master epoch 2 and patient key version 2.
"$bin" -q key rotate-master > /dev/null
"$bin" -q key rotate-patient G-001 > /dev/null
"$bin" patient list --json > "$out/expected/patient-list.json"
for p in G-001 G-002 G-003; do "$bin" note list "$p" --json > "$out/expected/notes-$p.json"; done
for pn in "G-001 $n1" "G-001 $n2" "G-002 $n3"; do
  set -- $pn
  "$bin" note history "$1" "$2" --json > "$out/expected/history-$1-$2.json"
done
"$bin" verify --json > "$out/expected/verify.json"
"$bin" -q backup "$out/backup.carnet" > /dev/null
rm -f "$out/vault/carnet.lock"
du -sh "$out"
