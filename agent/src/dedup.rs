//! Command de-duplication by id. A command may be delivered more than once
//! (after a reconnect the control plane re-sends everything unfinished); the
//! agent applies it once and answers every delivery with the same result.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use streamspace::v1 as pb;

#[derive(Debug, Clone)]
pub enum Seen {
    /// First delivery: apply it.
    New,
    /// Being applied; its result will follow.
    InProgress,
    /// Finished: send this result again.
    Done(pb::CommandResult),
}

pub struct Dedup {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Option<pb::CommandResult>>,
    /// Finished ids, oldest first, for eviction.
    order: VecDeque<String>,
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity,
        }
    }

    /// Records a delivery of `id` and says what to do with it.
    pub fn deliver(&self, id: &str) -> Seen {
        let mut i = self.inner.lock().expect("dedup lock");
        match i.entries.get(id) {
            Some(Some(r)) => Seen::Done(r.clone()),
            Some(None) => Seen::InProgress,
            None => {
                i.entries.insert(id.to_string(), None);
                Seen::New
            }
        }
    }

    /// Records the result of `id`, evicting the oldest finished entries.
    pub fn finish(&self, id: &str, result: pb::CommandResult) {
        let mut i = self.inner.lock().expect("dedup lock");
        i.entries.insert(id.to_string(), Some(result));
        i.order.push_back(id.to_string());
        while i.order.len() > self.capacity {
            if let Some(old) = i.order.pop_front() {
                i.entries.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_delivery_gets_the_same_result() {
        let d = Dedup::new(2);
        assert!(matches!(d.deliver("a"), Seen::New));
        assert!(matches!(d.deliver("a"), Seen::InProgress));
        let r = pb::CommandResult {
            command_id: "a".into(),
            outcome: None,
        };
        d.finish("a", r.clone());
        assert!(matches!(d.deliver("a"), Seen::Done(x) if x == r));
        d.finish("b", r.clone());
        d.finish("c", r.clone());
        assert!(
            matches!(d.deliver("a"), Seen::New),
            "evicted beyond capacity"
        );
    }
}
