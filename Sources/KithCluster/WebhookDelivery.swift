import KithCRDT
import KithReplication

/// Which member delivers a webhook subscription: of the core members this node sees alive
/// (itself included), the one ranking highest for the subscription's name (rendezvous hashing).
/// Every node decides alone; while views agree exactly one delivers, and when the owner dies the
/// next-ranked member takes over from the progress it left (docs/feed.md, "Webhooks").
public enum SubscriptionOwnership {
    public static func owner(of name: String, among members: [Member]) -> UInt64? {
        members.filter { $0.role == .core && $0.status == .alive }.max { rank(name, $0.id) < rank(name, $1.id) }?.id
    }

    /// A stable 64-bit rank of (name, member): FNV-1a over the name, mixed with the id.
    static func rank(_ name: String, _ member: UInt64) -> (UInt64, UInt64) {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        var mixer = SplitMix64(seed: hash ^ member)
        return (mixer.next(), member)
    }
}

/// When a subscription's next delivery goes, after failures: exponential backoff from
/// `firstDelayMillis` doubling to `maximumDelayMillis`, and after `maximumAttempts` failed
/// attempts the batch is parked in the dead-letter list and delivery goes on after it.
public struct WebhookRetryPolicy: Equatable, Sendable {
    public var firstDelayMillis: Int64
    public var maximumDelayMillis: Int64
    public var maximumAttempts: Int

    public init(firstDelayMillis: Int64 = 1_000, maximumDelayMillis: Int64 = 60_000, maximumAttempts: Int = 8) {
        precondition(
            firstDelayMillis > 0 && maximumDelayMillis >= firstDelayMillis && maximumAttempts > 0,
            "a retry policy \(firstDelayMillis) \(maximumDelayMillis) \(maximumAttempts)")
        self.firstDelayMillis = firstDelayMillis
        self.maximumDelayMillis = maximumDelayMillis
        self.maximumAttempts = maximumAttempts
    }

    public enum Decision: Equatable, Sendable {
        /// Send the batch now.
        case deliver
        /// Not before this time.
        case wait(until: Int64)
        /// Park the batch: it failed `maximumAttempts` times.
        case deadLetter
    }

    /// What to do with the batch at the head of a subscription that failed it `failures` times
    /// in a row, the last at `lastFailure`, at `now`.
    public func decide(failures: Int, lastFailure: Int64?, now: Int64) -> Decision {
        if failures >= maximumAttempts { return .deadLetter }
        guard failures > 0, let lastFailure else { return .deliver }
        let due = lastFailure + delay(afterFailures: failures)
        return now >= due ? .deliver : .wait(until: due)
    }

    /// The wait after the `failures`-th failure in a row: first, then doubling, capped.
    public func delay(afterFailures failures: Int) -> Int64 {
        var delay = firstDelayMillis
        for _ in 1..<max(1, failures) {
            delay = min(maximumDelayMillis, delay * 2)
            if delay == maximumDelayMillis { break }
        }
        return delay
    }
}
