//! The per-room tables of one session (its cursors, its joined rooms): a vector of pairs
//! searched in order, grown one slot at a time.
//!
//! Why not a `HashMap`: a session joins a few rooms (at most `ROOMS_PER_SESSION_MAX`), and a
//! hash map's first insert allocates four buckets, which for a session's values came to
//! 1.1 KiB per idle connection of its two tables with one room each (heaptrack,
//! benches/RESULTS.md). Here one room costs one slot. A linear search over a handful of short
//! keys is as fast as hashing one.

/// Rooms by id, in no particular order; at most one value per room.
pub(super) struct RoomMap<V> {
    entries: Vec<(String, V)>,
}

impl<V> Default for RoomMap<V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<V> RoomMap<V> {
    fn position(&self, room: &str) -> Option<usize> {
        self.entries.iter().position(|(key, _)| key == room)
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn contains_key(&self, room: &str) -> bool {
        self.position(room).is_some()
    }

    pub(super) fn get(&self, room: &str) -> Option<&V> {
        let index = self.position(room)?;
        Some(&self.entries[index].1)
    }

    pub(super) fn get_mut(&mut self, room: &str) -> Option<&mut V> {
        let index = self.position(room)?;
        Some(&mut self.entries[index].1)
    }

    /// The value for `room`, inserted with `make` when there is none.
    pub(super) fn get_or_insert_with(&mut self, room: &str, make: impl FnOnce() -> V) -> &mut V {
        let index = match self.position(room) {
            Some(index) => index,
            None => {
                self.push(room.to_string(), make());
                self.entries.len() - 1
            }
        };
        &mut self.entries[index].1
    }

    /// Inserts or replaces the value for `room`.
    pub(super) fn insert(&mut self, room: String, value: V) {
        match self.position(&room) {
            Some(index) => self.entries[index].1 = value,
            None => self.push(room, value),
        }
    }

    fn push(&mut self, room: String, value: V) {
        // Exactly one more slot: `push` alone would reserve four for the first room.
        self.entries.reserve_exact(1);
        self.entries.push((room, value));
    }

    pub(super) fn remove(&mut self, room: &str) -> Option<V> {
        let index = self.position(room)?;
        let (_, value) = self.entries.swap_remove(index);
        // Give back what a session that joined many rooms and left them holds.
        if self.entries.capacity() > 2 * self.entries.len() {
            self.entries.shrink_to_fit();
        }
        Some(value)
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.iter().map(|(room, _)| room)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, value)| value)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.entries.iter().map(|(room, value)| (room, value))
    }
}

impl<'a, V> IntoIterator for &'a RoomMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, V)>,
        fn(&'a (String, V)) -> (&'a String, &'a V),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(room, value)| (room, value))
    }
}

#[cfg(test)]
mod tests {
    use super::RoomMap;

    #[test]
    fn one_slot_per_room_and_lookups_by_id() {
        let mut map = RoomMap::default();
        map.insert("a".to_string(), 1);
        assert_eq!(map.entries.capacity(), 1, "the first room takes one slot");
        *map.get_or_insert_with("b", || 2) += 10;
        map.insert("a".to_string(), 3);
        assert_eq!(map.len(), 2);
        assert_eq!(map.get_mut("a"), Some(&mut 3));
        assert_eq!(map.get_mut("b"), Some(&mut 12));
        assert!(!map.contains_key("c"));
        assert_eq!(map.remove("a"), Some(3));
        assert_eq!(map.remove("a"), None);
        assert_eq!(map.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(map.values().sum::<i32>(), 12);
    }

    #[test]
    fn removing_rooms_gives_back_the_slots() {
        let mut map = RoomMap::default();
        for room in 0..10 {
            map.insert(room.to_string(), room);
        }
        for room in 1..10 {
            map.remove(&room.to_string());
        }
        assert!(
            map.entries.capacity() <= 2,
            "{} slots kept for one room",
            map.entries.capacity()
        );
        assert_eq!(map.iter().collect::<Vec<_>>(), [(&"0".to_string(), &0)]);
    }
}
