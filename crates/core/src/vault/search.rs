//! Search: every current note of every patient (or of one) decrypted and matched ignoring
//! case, one patient at a time on every core (docs/architecture.md, "Reads").

use carnet_storage::Store;

use super::notes::{current_versions, Bodies};
use super::Vault;
use crate::access::Duty;
use crate::access_log::Action;
use crate::model::{PatientId, PatientRef, SearchHit};
use crate::Error;

impl<S: Store> Vault<S> {
    /// Notes whose current body contains `text`, ignoring case; all patients, or one. The
    /// access-log entry names every patient with a hit (format 2).
    /// Decrypts every note it scans (fine for a clinic's volume; see docs/architecture.md).
    pub fn search(&self, text: &str, patient: Option<&PatientId>) -> Result<Vec<SearchHit>, Error> {
        // A search shows snippets of every patient with a hit: the entry names them all.
        self.logged_showing(
            Action::Search,
            patient,
            || self.search_unlogged(text, patient),
            |hits: &Vec<SearchHit>| {
                hits.iter()
                    .map(|h| h.patient_id.as_str().to_string())
                    .collect()
            },
        )
    }

    fn search_unlogged(
        &self,
        text: &str,
        patient: Option<&PatientId>,
    ) -> Result<Vec<SearchHit>, Error> {
        self.require(Duty::Clinical)?;
        let mut states = match patient {
            Some(id) => vec![self.find_patient(id)?],
            None => self.all_patients()?,
        };
        states.sort_by_key(|s| s.info.seq);
        let needle = text.to_lowercase();
        // Patients are searched on every core; hits keep the patients' order.
        let per_patient = crate::par::map_parallel(states.iter().map(Ok), |st| {
            let mut hits = Vec::new();
            let notes = self.settled(st, |st| self.notes_of(st, Bodies::Current))?;
            for n in current_versions(notes) {
                let Some(body) = &n.body else { continue };
                if let Some(snippet) = find_snippet(body.as_bytes(), &needle) {
                    hits.push(SearchHit {
                        patient_id: PatientId::from_stored(st.info.id.clone())?,
                        note_id: n.id,
                        version: n.version,
                        snippet,
                        patient_ref: st.info.reference.map(PatientRef),
                    });
                }
            }
            Ok::<_, Error>(hits)
        })?;
        let mut hits = Vec::new();
        for h in per_patient {
            hits.extend(h?);
        }
        Ok(hits)
    }
}

/// The byte range in `text` of the first match of `needle` (already lower-cased), comparing
/// `text` lower-cased char by char as it is scanned, without copying it. Most positions fail on
/// their first char, so this is close to a plain substring search.
fn find_ignoring_case(text: &str, needle: &str) -> Option<(usize, usize)> {
    if needle.is_empty() {
        return Some((0, 0));
    }
    let first = needle.chars().next()?;
    for (i, c) in text.char_indices() {
        // Quick reject: the first char must lower-case to something starting with `first`
        // (an ASCII char lower-cases to exactly its ASCII lower case: no table lookup).
        let candidate = if c.is_ascii() {
            c.to_ascii_lowercase() == first
        } else {
            c == first || c.to_lowercase().next() == Some(first)
        };
        if !candidate {
            continue;
        }
        let mut want = needle.chars();
        let mut end = i;
        let mut matched = true;
        'scan: for (j, c) in text[i..].char_indices() {
            for l in c.to_lowercase() {
                match want.next() {
                    Some(w) if w == l => {}
                    Some(_) => {
                        matched = false;
                        break 'scan;
                    }
                    // The needle ended inside this char's lower-casing ("i" in "İ", which
                    // lower-cases to "i" and a combining dot): a match, as in the lower-cased
                    // text; it covers the whole char.
                    None => {
                        end = i + j + c.len_utf8();
                        break 'scan;
                    }
                }
            }
            end = i + j + c.len_utf8();
            if want.clone().next().is_none() {
                break;
            }
        }
        if matched && want.next().is_none() {
            return Some((i, end));
        }
    }
    None
}

/// A snippet of `body` around the first case-insensitive match of `needle` (already
/// lower-cased), or `None` when there is no match.
fn find_snippet(body: &[u8], needle: &str) -> Option<String> {
    // `from_utf8` validates much faster than `from_utf8_lossy` walks chunks; bodies are
    // almost always valid UTF-8.
    let text = match std::str::from_utf8(body) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(body),
    };
    let (start_orig, end_orig) = find_ignoring_case(&text, needle)?;
    let begin = text[..start_orig]
        .char_indices()
        .rev()
        .nth(29)
        .map_or(0, |(i, _)| i);
    let end = text[end_orig..]
        .char_indices()
        .nth(30)
        .map_or(text.len(), |(i, _)| end_orig + i);
    let mut s = String::new();
    if begin > 0 {
        s.push('…');
    }
    s.extend(
        text[begin..end]
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c }),
    );
    if end < text.len() {
        s.push('…');
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::find_snippet;

    #[test]
    fn snippets_are_case_insensitive_and_bounded() {
        let body =
            "Le patient présente une TOUX sèche depuis trois semaines, sans fièvre.".as_bytes();
        let s = find_snippet(body, "toux").unwrap();
        assert!(s.contains("TOUX"), "{s}");
        assert!(find_snippet(body, "absent").is_none());
        let long = "a".repeat(500) + "NEEDLE" + &"b".repeat(500);
        let s = find_snippet(long.as_bytes(), "needle").unwrap();
        assert!(s.contains("NEEDLE") && s.chars().count() < 80, "{s}");
        assert!(find_snippet("İstanbul".as_bytes(), "stanbul").is_some());
        assert!(find_snippet("L'ÉCOLE est fermée".as_bytes(), "école").is_some());
        assert!(find_snippet("abc".as_bytes(), "abcd").is_none());
    }

    proptest::proptest! {
        #[test]
        fn matching_agrees_with_lowercasing_the_whole_text(
            // With the non-ASCII chars that lower-case to ASCII (Kelvin sign, dotted İ).
            text in "[a-cA-CéÉkKiI\u{212A}\u{130} ]{0,40}",
            needle in "[a-céki]{1,4}",
        ) {
            let expected = text.to_lowercase().contains(&needle);
            proptest::prop_assert_eq!(super::find_ignoring_case(&text, &needle).is_some(), expected);
        }
    }
}
