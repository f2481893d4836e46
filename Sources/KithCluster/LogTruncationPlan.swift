import KithReplication
import KithStore

/// Which of this node's change-log entries may go: those every member that still counts has read.
///
/// A member says how far it has read this node's log each time it pulls (the pull's cursor, its
/// durable position). It holds truncation back at that position — or, if it has not pulled since
/// this node started, at what is already truncated — until it has been silent for longer than
/// `maxOfflineWindow`. Then it no longer counts: when it comes back, its pull finds its cursor
/// behind the log, and this node brings it up to date by a tree comparison instead
/// (`PeerMessage.logTruncated`). Members that left never count. A node that knows no member at
/// all drops nothing. A pure function of what the node
/// knows and the time passed in, so the simulation judges the rule the nodes run.
public struct LogTruncationPlan: Sendable, Equatable {
    /// What one member contributes to the decision.
    public struct Reader: Sendable, Equatable {
        public var id: UInt64
        public var name: String
        /// How far it said it has read this node's log; nil if it has not said since this node started.
        public var readThrough: UInt64?
        /// How long since this node last heard from it (or since this node started, if it has not).
        public var silentFor: Int64
        /// Whether truncation waits for it.
        public var holdsBack: Bool
    }

    /// Entries through this local sequence may go.
    public var through: UInt64
    /// Every member but those that left, by name.
    public var readers: [Reader]

    /// What a member's state says: its last contact and, if it pulled since this node started,
    /// its cursor in this node's log.
    public typealias Contact = MemberContact

    /// The plan for a log of extent `log`, given the members known, what each last said
    /// (`contacts`, by member id), when this node began counting silence (`since`), and `now`.
    public static func plan(
        log: LogExtent, members: [Member], contacts: [UInt64: Contact], since: Int64, now: Int64, maxOfflineWindow: Int64
    ) -> LogTruncationPlan {
        precondition(maxOfflineWindow > 0, "maxOfflineWindow must be positive, not \(maxOfflineWindow)")
        // Knowing no member at all (just started, before gossip has found anyone) is not knowing
        // that every member has read: nothing goes.
        var through = members.isEmpty ? log.truncatedThrough : log.last
        var readers: [Reader] = []
        for member in members.sorted(by: { ($0.name, $0.id) < ($1.name, $1.id) }) where member.status != .left {
            let contact = contacts[member.id]
            let silentFor = contact?.silence(since: since, now: now) ?? now - since
            let holdsBack = silentFor <= maxOfflineWindow
            if holdsBack { through = min(through, contact?.readThrough ?? log.truncatedThrough) }
            readers.append(Reader(id: member.id, name: member.name, readThrough: contact?.readThrough, silentFor: silentFor, holdsBack: holdsBack))
        }
        return LogTruncationPlan(through: max(through, log.truncatedThrough), readers: readers)
    }

    /// Whether the plan drops anything from a log of extent `log` (records of a log marked
    /// incomplete below its truncation point included).
    public func truncates(_ log: LogExtent) -> Bool { through > log.truncatedThrough || log.holdsTruncatedRecords }
}
