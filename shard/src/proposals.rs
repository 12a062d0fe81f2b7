//! Commands this node proposed and has not applied yet, kept decoded.
//!
//! A leader encodes a batch into a Raft entry, appends it, and a moment later applies that same
//! entry, read back from the Raft log: decoding it again cost ~2 % of the node's CPU at full
//! ingest speed (an allocation per string of every entry). The proposer leaves the command it
//! encoded here; apply takes it back when the entry's bytes are exactly the bytes that command
//! was encoded to, and decodes only what it does not find (entries another node proposed, a
//! restart's replay, a proposal pushed out by newer ones). Byte equality is the whole check:
//! equal bytes decode to the same command, so what apply uses never depends on where it came
//! from.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::entry::ShardCommand;

/// One shard's proposed commands (see the module documentation). Holds at most `capacity`; a
/// new one pushes out the oldest.
pub struct Proposals {
    capacity: usize,
    items: Mutex<VecDeque<Proposed>>,
    next_ticket: AtomicU64,
    taken: AtomicU64,
}

struct Proposed {
    ticket: u64,
    bytes: Vec<u8>,
    command: ShardCommand,
}

/// Names a command left with [`Proposals::put`], to withdraw it if its proposal fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

impl Proposals {
    /// Keeps at most `capacity` commands (0 keeps none). A proposer with at most N Raft entries
    /// in flight needs N.
    pub fn new(capacity: usize) -> Self {
        Proposals {
            capacity,
            items: Mutex::new(VecDeque::with_capacity(capacity)),
            next_ticket: AtomicU64::new(0),
            taken: AtomicU64::new(0),
        }
    }

    /// Leaves `command`, whose encoding is `bytes`, for apply to take back.
    pub fn put(&self, bytes: Vec<u8>, command: ShardCommand) -> Ticket {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        if self.capacity == 0 {
            return Ticket(ticket);
        }
        let mut items = self.lock();
        while items.len() >= self.capacity {
            items.pop_front();
        }
        items.push_back(Proposed {
            ticket,
            bytes,
            command,
        });
        Ticket(ticket)
    }

    /// Takes back the command encoded to exactly `bytes`, if it is here.
    pub fn take(&self, bytes: &[u8]) -> Option<ShardCommand> {
        let mut items = self.lock();
        let at = items.iter().position(|p| p.bytes == bytes)?;
        let found = items.remove(at)?;
        drop(items);
        self.taken.fetch_add(1, Ordering::Relaxed);
        Some(found.command)
    }

    /// Withdraws the command of `ticket` (its proposal failed), if it is still here.
    pub fn withdraw(&self, ticket: Ticket) {
        self.lock().retain(|p| p.ticket != ticket.0);
    }

    /// How many commands apply took back instead of decoding them, since the start.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// How many commands are held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Proposed>> {
        // What is held is a cache: a panic elsewhere cannot leave it wrong, only incomplete.
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Level, StoredEntry};

    fn command(message: &str) -> ShardCommand {
        ShardCommand::AppendMinted(vec![StoredEntry {
            log_id: crate::keys::mint_log_id(1_700_000_000_000_000),
            timestamp_us: 1_700_000_000_000_000,
            received_at_us: 1_700_000_000_000_100,
            service: "svc".into(),
            level: Level::Info,
            message: message.into(),
            fields_json: "{}".into(),
            exception_type: None,
            exception_message: None,
            stack_trace: None,
            fingerprint: None,
            host: None,
            environment: None,
            region: None,
            sealed_original: None,
        }])
    }

    #[test]
    fn takes_back_only_the_command_of_exactly_its_bytes() {
        let proposals = Proposals::new(4);
        let (a, b) = (command("a"), command("b"));
        let (bytes_a, bytes_b) = (a.encode(), b.encode());
        proposals.put(bytes_a.clone(), a.clone());
        proposals.put(bytes_b.clone(), b.clone());
        let mut other = bytes_a.clone();
        *other.last_mut().unwrap() ^= 1;
        assert!(proposals.take(&other).is_none());
        assert!(proposals.take(&bytes_a[..bytes_a.len() - 1]).is_none());
        assert_eq!(proposals.taken(), 0);
        assert_eq!(proposals.take(&bytes_b).unwrap().entries(), b.entries());
        assert_eq!(proposals.take(&bytes_a).unwrap().entries(), a.entries());
        assert!(proposals.take(&bytes_a).is_none(), "taken once");
        assert_eq!(proposals.taken(), 2);
        assert!(proposals.is_empty());
    }

    #[test]
    fn holds_at_most_its_capacity_and_withdraws_failed_proposals() {
        let proposals = Proposals::new(2);
        let commands: Vec<_> = ["a", "b", "c"].into_iter().map(command).collect();
        let tickets: Vec<_> = commands
            .iter()
            .map(|c| proposals.put(c.encode(), c.clone()))
            .collect();
        assert_eq!(proposals.len(), 2);
        assert!(
            proposals.take(&commands[0].encode()).is_none(),
            "oldest out"
        );
        proposals.withdraw(tickets[1]);
        assert!(proposals.take(&commands[1].encode()).is_none());
        assert!(proposals.take(&commands[2].encode()).is_some());
        let none = Proposals::new(0);
        none.put(commands[0].encode(), commands[0].clone());
        assert!(none.is_empty());
    }
}
