//! Application selection by AID (DF name), exact or by prefix.

/// How a SELECT by DF name is matched against registered AIDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AidMatch {
    /// The requested name must equal the AID.
    Exact,
    /// The requested name may be a truncated prefix of the AID (ISO 7816-4
    /// partial DF name selection; yubico-piv-tool sends 5 of PIV's 9+ bytes).
    Prefix,
}

/// Which of several matching AIDs a SELECT wants (P2 bits b2 b1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Occurrence {
    First,
    Last,
    Next,
    Previous,
}

impl Occurrence {
    /// Decodes P2 b2 b1 of SELECT.
    pub fn from_p2(p2: u8) -> Occurrence {
        match p2 & 0x03 {
            0 => Occurrence::First,
            1 => Occurrence::Last,
            2 => Occurrence::Next,
            _ => Occurrence::Previous,
        }
    }
}

/// Registered AIDs, each standing for an application index of the card type.
#[derive(Clone, Debug, Default)]
pub struct AidRegistry {
    entries: Vec<Vec<u8>>,
}

impl AidRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an AID; returns its index.
    pub fn add(&mut self, aid: &[u8]) -> usize {
        self.entries.push(aid.to_vec());
        self.entries.len() - 1
    }

    pub fn aid(&self, index: usize) -> Option<&[u8]> {
        self.entries.get(index).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn matches(aid: &[u8], name: &[u8], mode: AidMatch) -> bool {
        match mode {
            AidMatch::Exact => aid == name,
            // ISO 7816-4 requires a partial name of at least 5 bytes (the RID).
            AidMatch::Prefix => aid == name || (name.len() >= 5 && aid.starts_with(name)),
        }
    }

    /// Finds the application a SELECT by DF name addresses. `current` is the
    /// currently selected application, used for next/previous occurrence.
    pub fn select(
        &self,
        name: &[u8],
        mode: AidMatch,
        occurrence: Occurrence,
        current: Option<usize>,
    ) -> Option<usize> {
        let hits = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, aid)| Self::matches(aid, name, mode))
            .map(|(i, _)| i);
        match occurrence {
            Occurrence::First => hits.clone().next(),
            Occurrence::Last => hits.clone().next_back(),
            Occurrence::Next => match current {
                Some(c) => hits.clone().find(|i| *i > c),
                None => hits.clone().next(),
            },
            Occurrence::Previous => match current {
                Some(c) => hits.clone().rfind(|i| *i < c),
                None => hits.clone().next_back(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_prefix_and_next() {
        let mut r = AidRegistry::new();
        let piv = r.add(&[0xA0, 0, 0, 3, 8, 0, 0, 0x10, 0, 1, 0]);
        let other = r.add(&[0xA0, 0, 0, 3, 8, 0x99]);
        let five = [0xA0, 0, 0, 3, 8];
        assert_eq!(
            r.select(&five, AidMatch::Exact, Occurrence::First, None),
            None
        );
        assert_eq!(
            r.select(&five, AidMatch::Prefix, Occurrence::First, None),
            Some(piv)
        );
        assert_eq!(
            r.select(&five, AidMatch::Prefix, Occurrence::Next, Some(piv)),
            Some(other)
        );
        assert_eq!(
            r.select(&five, AidMatch::Prefix, Occurrence::Next, Some(other)),
            None
        );
        assert_eq!(
            r.select(&five, AidMatch::Prefix, Occurrence::Last, None),
            Some(other)
        );
        assert_eq!(
            r.select(&[0xA0, 0, 0], AidMatch::Prefix, Occurrence::First, None),
            None
        );
    }
}
