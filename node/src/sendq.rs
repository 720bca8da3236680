//! A connection's queue of frames to write: many producers (deliveries,
//! replies), one consumer (the connection's writer), bounded.
//!
//! Not a `tokio::sync::mpsc` channel because of what one costs per idle
//! connection: its shared state is cache-line padded (~0.4 KiB) and its first
//! block of 32 slots is allocated up front (~1.3 KiB), for a queue that is
//! empty almost all the time. Here a queue is a mutex, a `Notify` and a
//! `VecDeque` that allocates at the first frame (4 slots, ~0.2 KiB, kept),
//! grows with a burst and gives the burst's memory back once drained.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

/// Capacity kept after a drain; above it the deque's memory is given back.
const KEEP: usize = 16;

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds `capacity` items.
    Full,
    /// The consumer is gone.
    Closed,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// The queue. Producers push without waiting; the consumer awaits [`SendQueue::pop`].
#[derive(Debug)]
pub struct SendQueue<T> {
    state: Mutex<State<T>>,
    ready: Notify,
    capacity: usize,
}

impl<T> SendQueue<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
            }),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // The state is plain data: a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item`, or says why not (the item is dropped).
    pub fn push(&self, item: T) -> Result<(), Refused> {
        {
            let mut st = self.lock();
            if st.closed {
                return Err(Refused::Closed);
            }
            if st.items.len() >= self.capacity {
                return Err(Refused::Full);
            }
            st.items.push_back(item);
        }
        // Stores a permit if the consumer is not waiting yet: no lost wake-up.
        self.ready.notify_one();
        Ok(())
    }

    /// The next item without waiting.
    pub fn try_pop(&self) -> Option<T> {
        let mut st = self.lock();
        let item = st.items.pop_front();
        if st.items.is_empty() && st.items.capacity() > KEEP {
            st.items = VecDeque::new();
        }
        item
    }

    /// The next item, waiting for one. Cancel-safe: an item is only taken
    /// when this returns it.
    pub async fn pop(&self) -> T {
        loop {
            if let Some(item) = self.try_pop() {
                return item;
            }
            self.ready.notified().await;
        }
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The consumer is gone: later pushes are refused, queued items dropped.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.items = VecDeque::new();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn bounded_fifo_then_closed() {
        let q = SendQueue::new(2);
        assert_eq!(q.push(1), Ok(()));
        assert_eq!(q.push(2), Ok(()));
        assert_eq!(q.push(3), Err(Refused::Full));
        assert_eq!(q.try_pop(), Some(1));
        assert_eq!(q.push(4), Ok(()));
        assert_eq!(
            (q.try_pop(), q.try_pop(), q.try_pop()),
            (Some(2), Some(4), None)
        );
        q.push(5).unwrap();
        q.close();
        assert!(q.is_closed() && q.len() == 0);
        assert_eq!(q.push(6), Err(Refused::Closed));
    }

    #[test]
    fn drained_queue_gives_its_memory_back() {
        let q = SendQueue::new(1000);
        for i in 0..500 {
            q.push(i).unwrap();
        }
        assert!(q.lock().items.capacity() >= 500);
        while q.try_pop().is_some() {}
        assert_eq!(q.lock().items.capacity(), 0);
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_for_each_push() {
        let q = Arc::new(SendQueue::new(100));
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < 50 {
                    got.push(q.pop().await);
                }
                got
            })
        };
        for i in 0..50 {
            q.push(i).unwrap();
            if i % 7 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let got = tokio::time::timeout(Duration::from_secs(5), consumer)
            .await
            .expect("consumer woke for every item")
            .unwrap();
        assert_eq!(got, (0..50).collect::<Vec<_>>());
    }
}
