//! The engine's request queue. One request uses the device at a time; the others wait in
//! `metadata.priority` order (high, then normal, then low; first come, first served within a
//! level), as the seed's orchestrator queued its `WorkerRequest`s. Every request holds a
//! [`Ticket`] from the moment its id is known until its response is written, and each ticket
//! carries its own cancel flag: a cancel aimed at one request (by id, or at whatever runs now)
//! can never reach a request that arrives later.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};

/// `metadata.priority`. Declared low to high so the derived order is the queue's order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    /// The request's priority; validation has already refused names other than these three.
    pub fn from_name(name: Option<&str>) -> Self {
        match name {
            Some("high") => Priority::High,
            Some("low") => Priority::Low,
            _ => Priority::Normal,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Being parsed and checked: not yet asking for the device, but already cancellable by id.
    Preparing,
    Waiting,
    Running,
}

struct Entry {
    ticket_number: u64,
    /// Order of arrival in the waiting line (FIFO within a priority level).
    arrival: u64,
    request_id: Option<String>,
    priority: Priority,
    phase: Phase,
    cancelled: Arc<AtomicBool>,
}

impl Entry {
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct QueueState {
    next_ticket_number: u64,
    next_arrival: u64,
    entries: Vec<Entry>,
    /// Set when the engine is being freed: every ticket is cancelled and no new one is issued.
    closed: bool,
}

impl QueueState {
    /// The waiting entry that runs next: highest priority, then earliest arrival.
    fn next_to_run(&self) -> Option<u64> {
        self.entries
            .iter()
            .filter(|entry| entry.phase == Phase::Waiting)
            .max_by(|a, b| a.priority.cmp(&b.priority).then(b.arrival.cmp(&a.arrival)))
            .map(|entry| entry.ticket_number)
    }

    fn entry_mut(&mut self, ticket_number: u64) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|entry| entry.ticket_number == ticket_number)
    }
}

/// What the queue holds now, for the status message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSnapshot {
    pub running: Option<String>,
    /// Request ids (or "" for a model load) in the order they will run.
    pub waiting: Vec<String>,
}

#[derive(Default)]
pub struct RequestQueue {
    state: Mutex<QueueState>,
    /// Signalled when the device is released, a ticket leaves, or a cancel arrives.
    changed: Condvar,
}

impl RequestQueue {
    /// Issues a ticket for a request (`request_id`) or a model load (None). Err(Cancelled) once
    /// the engine is being freed.
    pub fn ticket(&self, request_id: Option<&str>) -> Result<Ticket<'_>> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(Error::Cancelled);
        }
        let ticket_number = state.next_ticket_number;
        state.next_ticket_number += 1;
        let cancelled = Arc::new(AtomicBool::new(false));
        state.entries.push(Entry {
            ticket_number,
            arrival: 0,
            request_id: request_id.map(str::to_string),
            priority: Priority::Normal,
            phase: Phase::Preparing,
            cancelled: cancelled.clone(),
        });
        Ok(Ticket { queue: self, ticket_number, cancelled })
    }

    /// Cancels the request using the device now, if any; true if there was one.
    pub fn cancel_running(&self) -> bool {
        let state = self.state.lock();
        let running = state.entries.iter().find(|entry| entry.phase == Phase::Running);
        running.map(Entry::cancel).is_some()
    }

    /// Cancels every request with this id, running, waiting or still being prepared; true if
    /// there was one. A waiting one leaves the queue at once without running.
    pub fn cancel_request(&self, request_id: &str) -> bool {
        let state = self.state.lock();
        let mut found = false;
        for entry in state.entries.iter().filter(|entry| entry.request_id.as_deref() == Some(request_id)) {
            entry.cancel();
            found = true;
        }
        if found {
            self.changed.notify_all();
        }
        found
    }

    /// Cancels every ticket and refuses new ones (the engine is being freed).
    pub fn close(&self) {
        let mut state = self.state.lock();
        state.closed = true;
        state.entries.iter().for_each(Entry::cancel);
        self.changed.notify_all();
    }

    pub fn snapshot(&self) -> QueueSnapshot {
        let state = self.state.lock();
        let id = |entry: &Entry| entry.request_id.clone().unwrap_or_default();
        let mut waiting: Vec<&Entry> = state.entries.iter().filter(|entry| entry.phase == Phase::Waiting).collect();
        waiting.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.arrival.cmp(&b.arrival)));
        QueueSnapshot {
            running: state.entries.iter().find(|entry| entry.phase == Phase::Running).map(id),
            waiting: waiting.into_iter().map(id).collect(),
        }
    }
}

/// One request's place in the queue; dropping it releases the device (if it held it) and
/// forgets the request, so a later cancel of its id finds nothing.
pub struct Ticket<'a> {
    queue: &'a RequestQueue,
    ticket_number: u64,
    cancelled: Arc<AtomicBool>,
}

impl Ticket<'_> {
    /// Joins the waiting line at `priority` and blocks until this request is the best one
    /// waiting and the device is free; Err(Cancelled) as soon as it is cancelled instead.
    pub fn wait_for_turn(&self, priority: Priority) -> Result<()> {
        let mut state = self.queue.state.lock();
        let arrival = state.next_arrival;
        state.next_arrival += 1;
        if let Some(entry) = state.entry_mut(self.ticket_number) {
            entry.priority = priority;
            entry.arrival = arrival;
            entry.phase = Phase::Waiting;
        }
        loop {
            if self.is_cancelled() {
                // Leaving the line may make another request the next one.
                if let Some(entry) = state.entry_mut(self.ticket_number) {
                    entry.phase = Phase::Preparing;
                }
                self.queue.changed.notify_all();
                return Err(Error::Cancelled);
            }
            let device_free = state.entries.iter().all(|entry| entry.phase != Phase::Running);
            if device_free && state.next_to_run() == Some(self.ticket_number) {
                if let Some(entry) = state.entry_mut(self.ticket_number) {
                    entry.phase = Phase::Running;
                }
                return Ok(());
            }
            self.queue.changed.wait(&mut state);
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// The flag the denoising loop polls at every step.
    pub fn cancel_flag(&self) -> &AtomicBool {
        &self.cancelled
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut state = self.queue.state.lock();
        state.entries.retain(|entry| entry.ticket_number != self.ticket_number);
        self.queue.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_order_high_normal_low_and_arrival_within_a_level() {
        let queue = RequestQueue::default();
        let tickets: Vec<Ticket> = ["low-1", "normal-1", "high-1", "low-2", "high-2"].iter().map(|id| queue.ticket(Some(id)).unwrap()).collect();
        let mut state = queue.state.lock();
        for (arrival, entry) in state.entries.iter_mut().enumerate() {
            entry.phase = Phase::Waiting;
            entry.arrival = arrival as u64;
            entry.priority = Priority::from_name(entry.request_id.as_deref().and_then(|id| id.split('-').next()));
        }
        drop(state);
        assert_eq!(queue.snapshot().waiting, ["high-1", "high-2", "normal-1", "low-1", "low-2"]);
        assert_eq!(queue.state.lock().next_to_run(), Some(tickets[2].ticket_number));
    }

    #[test]
    fn a_cancelled_waiting_ticket_leaves_at_once_and_a_closed_queue_issues_none() {
        let queue = RequestQueue::default();
        let running = queue.ticket(Some("a")).unwrap();
        running.wait_for_turn(Priority::Normal).unwrap();
        let waiting = queue.ticket(Some("b")).unwrap();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| waiting.wait_for_turn(Priority::High));
            while queue.snapshot().waiting.is_empty() {
                std::thread::yield_now();
            }
            assert!(queue.cancel_request("b"));
            assert!(matches!(waiter.join().unwrap(), Err(Error::Cancelled)));
        });
        assert!(!running.is_cancelled(), "cancelling b touched a");
        assert!(!queue.cancel_request("c"), "an unknown id cancels nothing");
        queue.close();
        assert!(running.is_cancelled());
        assert!(matches!(queue.ticket(Some("d")), Err(Error::Cancelled)));
    }
}
