//! Memorable two-word device names (as Mullvad does), for devices added without a name.

const ADJECTIVES: &[&str] = &[
    "amber", "brave", "calm", "clever", "cosmic", "crisp", "daring", "eager", "fancy", "gentle",
    "golden", "happy", "humble", "jolly", "keen", "lively", "lucky", "mellow", "misty", "noble",
    "polar", "proud", "quick", "quiet", "rapid", "royal", "silent", "silver", "sunny", "swift",
    "tidy", "vivid", "witty", "young", "zesty", "bold",
];

const NOUNS: &[&str] = &[
    "badger", "beacon", "bison", "cedar", "comet", "coral", "falcon", "ferret", "fjord", "gecko",
    "glacier", "harbor", "heron", "koala", "lagoon", "lynx", "maple", "meadow", "otter", "panda",
    "pebble", "pine", "puffin", "quokka", "raven", "reef", "river", "robin", "salmon", "sparrow",
    "summit", "tiger", "tundra", "walrus", "willow", "yak",
];

/// A random name such as `swift-otter` (1,296 combinations; the caller resolves collisions).
pub fn random_name() -> String {
    let r = uuid::Uuid::new_v4().as_u128();
    let adjective = ADJECTIVES[usize::try_from(r % ADJECTIVES.len() as u128).unwrap_or(0)];
    let noun = NOUNS[usize::try_from((r >> 64) % NOUNS.len() as u128).unwrap_or(0)];
    format!("{adjective}-{noun}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_lowercase_words() {
        let name = super::random_name();
        let (a, b) = name.split_once('-').unwrap();
        assert!(!a.is_empty() && !b.is_empty());
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '-'));
    }
}
