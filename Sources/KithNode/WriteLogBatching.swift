/// When the writer of a node with a write-ahead log ends the LMDB transaction it is filling
/// (docs/storage.md, "The write-ahead log"), pure: the writer asks before each group, and does
/// what it is told.
///
/// Requests are acknowledged once their record is synced in the log, so the transaction can
/// stay open while more arrive: fewer, larger commits, each writing a page once for many
/// messages. It ends when a task is next (tasks open their own transactions), when it has grown
/// old (reads wait for it: this bounds how long), when it is full, or when no request has come
/// for a moment (a lone writer's read then waits little).
///
/// How old depends on whether anyone watches for commits: a read waiting for an acknowledged
/// write, a feed waiting for changes, or peers (which copy only what is committed). Unwatched,
/// the transaction stays open longer: each commit stalls the writer while it writes its pages,
/// so fewer commits take more requests (docs/benchmarks.md, "Transactions as long as nobody
/// waits"). A watcher that comes while it is open makes the shorter limit apply from then on.
struct WriteLogBatching: Equatable, Sendable {
    /// How long a transaction stays open at most while someone watches for commits: what a read
    /// waiting for an acknowledged write waits at most, besides the commit itself.
    var maximumAgeNanoseconds: UInt64 = 15_000_000
    /// How long it stays open at most while nobody does (never less than `maximumAgeNanoseconds`).
    var unwatchedMaximumAgeNanoseconds: UInt64 = 60_000_000
    /// How long the writer waits for another request before it commits.
    var idleNanoseconds: UInt64 = 1_000_000
    var maximumMessages = 10_000

    /// Before taking another request, buffered records go to the file (and the sync thread)
    /// only when the sync thread is free and there are this many requests, or messages, to
    /// make the sync worth it; otherwise when the writer would wait or commit. Fewer, fuller
    /// syncs: each costs the sync thread about the same whatever it carries.
    var requestsPerWrite = 8
    var messagesPerWrite = 32

    /// Whether to write the buffered records before taking the next request.
    func writesBeforeTaking(requests: Int, messages: Int, syncThreadFree: Bool) -> Bool {
        syncThreadFree && requests > 0 && (requests >= requestsPerWrite || messages >= messagesPerWrite)
    }

    enum Next: Equatable {
        /// Nothing queued, for `idleNanoseconds` so far.
        case nothing(idleNanoseconds: UInt64)
        /// A request of this many messages.
        case request(messages: Int)
        case task
    }

    enum Decision: Equatable {
        case take
        /// Wait at most this long for a request, then ask again.
        case wait(nanoseconds: UInt64)
        case commit
    }

    /// What to do with `next`, in a transaction open for `age` holding `messages` messages,
    /// `watched` when someone waits for a commit.
    func decide(_ next: Next, age: UInt64, messages: Int, watched: Bool) -> Decision {
        let limit = watched ? maximumAgeNanoseconds : max(maximumAgeNanoseconds, unwatchedMaximumAgeNanoseconds)
        switch next {
        case .task: return .commit
        case .request(let size):
            if messages == 0 { return .take }
            return age >= limit || messages + size > maximumMessages ? .commit : .take
        case .nothing(let idle):
            if messages == 0 || age >= limit || idle >= idleNanoseconds { return .commit }
            return .wait(nanoseconds: min(idleNanoseconds - idle, limit - age))
        }
    }
}
