import KithCRDT
import KithProfile
import KithReplication
import KithStore

/// Which forget records a node may drop, and which members must first drop their old data
/// before it takes anything from them again (docs/replication.md, "Compacting forget entries").
///
/// A record may go once no new message can be dated at or before its time (the `horizon`:
/// `maxEventAge`, the clock bound, `maxOfflineWindow` and a margin before now, rounded down to a
/// whole day so that nodes whose clocks differ agree but near midnight) and every member that
/// counts holds the erasure (its version vector, carried by its pulls, covers the change that
/// made it), and so does this node's own; of a scoped site, that this node read its log through
/// within the window. A member counts while it was heard from within `maxOfflineWindow` (one that left
/// too, unlike for log truncation: a restart leaves first). One that does not count may hold data about the erased person; it is
/// quarantined: this node takes nothing from it until it says it dropped everything dated at or
/// before what this node compacted (`ForgetCompactionGate`). A pure function of what the node
/// knows and the time passed in, so the simulation judges the rule the nodes run.
public struct ForgetCompactionPlan: Sendable, Equatable {
    /// How long before now a record's time must be (the parts of the horizon), in ms.
    public struct Bounds: Sendable, Equatable {
        public var maxEventAge: Int64
        public var clockBound: Int64
        public var maxOfflineWindow: Int64
        public var margin: Int64
        /// The horizon is rounded down to a multiple of this (a day; shorter in the simulation).
        public var quantum: Int64

        public init(maxEventAge: Int64, clockBound: Int64, maxOfflineWindow: Int64, margin: Int64 = 86_400_000, quantum: Int64 = 86_400_000) {
            precondition(
                maxEventAge > 0 && clockBound >= 0 && maxOfflineWindow > 0 && margin >= 0 && quantum > 0,
                "compaction bounds \(maxEventAge), \(clockBound), \(maxOfflineWindow), \(margin), \(quantum)")
            self.maxEventAge = maxEventAge
            self.clockBound = clockBound
            self.maxOfflineWindow = maxOfflineWindow
            self.margin = margin
            self.quantum = quantum
        }

        /// Records dated at or before this may go, at `now`.
        public func horizon(at now: Int64) -> Int64 {
            let raw = now - (maxEventAge + clockBound + maxOfflineWindow + margin)
            return raw - ((raw % quantum) + quantum) % quantum
        }
    }

    /// What one member last said (its last pull's version vector, when it was heard from).
    public typealias Contact = MemberContact

    /// Records dated at or before this may go (if every counting member holds them).
    public var horizon: Int64
    /// What this node and every member that counts hold: the least of their vectors, origin by
    /// origin; nil when a member that counts has not said (nothing may go).
    public var held: VersionVector?
    /// Members that do not count (silent past the window), by id: quarantined if anything is
    /// dropped under this plan.
    public var uncounted: [UInt64]
    /// Members that count, by id.
    public var counted: [UInt64]
    /// Members that count and hold every record back: not heard what they hold since this node
    /// started, or (a scoped site) their log not read within the window. For status.
    public var waitingOn: [UInt64]

    public init(horizon: Int64, held: VersionVector?, uncounted: [UInt64], counted: [UInt64], waitingOn: [UInt64] = []) {
        self.horizon = horizon
        self.held = held
        self.uncounted = uncounted
        self.counted = counted
        self.waitingOn = waitingOn
    }

    /// Whether `record` may go under this plan.
    public func mayDrop(_ record: ForgetRecord) -> Bool {
        guard let held else { return false }
        return record.isCompactable(horizon: horizon, held: held)
    }

    /// The plan at `now`, given the members known (`members`, this node not among them), what
    /// each last said (`contacts`, by id), this node's own version vector (`own`), and when
    /// this node began counting silence (`since`).
    /// `now` and `since` are on the clock that times silence (monotonic in `kith serve`); the
    /// horizon is reckoned from `wall`, the wall clock records are dated by.
    /// `readsSites`: this node reads scoped sites' logs and answers their syncs (a core). Any
    /// other member takes nothing from a site: a site's writes reach it through the cores' logs,
    /// where erasures filtered them, so sites do not enter its plan (docs/replication.md).
    public static func plan(
        members: [Member], contacts: [UInt64: Contact], own: VersionVector, since: Int64, now: Int64, wall: Int64, bounds: Bounds,
        readsSites: Bool = true
    ) -> ForgetCompactionPlan {
        // This node's own vector counts too: a record it holds only through a tree comparison
        // (which moves data, not vectors) stays until its log catches up, as it does on the
        // peers that wait for it, so that every node reaches the same decision.
        var held: VersionVector? = own
        var counted: [UInt64] = [], uncounted: [UInt64] = [], waitingOn: [UInt64] = []
        // Of the uncounted, those silent (not those that left).
        var silent = 0
        for member in members.sorted(by: { $0.id < $1.id }) where readsSites || !member.scoped {
            let contact = contacts[member.id]
            let silentFor = contact?.silence(since: since, now: now) ?? now - since
            // A member that left counts too until the window passes: `kith serve` leaves on
            // SIGTERM, and a node restarted must not come back to find itself quarantined.
            guard silentFor <= bounds.maxOfflineWindow else {
                uncounted.append(member.id)
                if member.status != .left { silent += 1 }
                continue
            }
            counted.append(member.id)
            if member.scoped {
                // A scoped site's documents never leave it: all it sends is its own log, and it
                // never pulls, so it has no vector to say. What must hold of it instead is that
                // this node read its log through recently (a chain of pulls begun within the
                // window ended with nothing more): every message it took before then is here,
                // where the erasure dominated it, and one it takes later is dated after the
                // horizon (`maxEventAge` at its ingest; the horizon adds the clock bound, the
                // window and the margin). Until then it holds everything back.
                if contact?.logReadAsOf.map({ now - $0 > bounds.maxOfflineWindow }) ?? true {
                    held = nil
                    waitingOn.append(member.id)
                }
                continue
            }
            guard let versions = contact?.versions else {
                held = nil
                waitingOn.append(member.id)
                continue
            }
            guard let sofar = held else { continue }
            held = sofar.leastWith(versions)
        }
        // Knowing no member that counts is not knowing that every member holds the erasure.
        if counted.isEmpty { held = nil }
        // Silent past the window are more of the members (those that left aside) than this node
        // hears: more likely this node was the one away. Compacting now would quarantine most of
        // the cluster — each would drop what is dated before the compaction and resync — where
        // waiting until this node hears them again costs nothing (the simulation found a member
        // back from away quarantining the cores).
        if silent > counted.count { held = nil }
        return ForgetCompactionPlan(
            horizon: bounds.horizon(at: wall), held: held, uncounted: uncounted, counted: counted, waitingOn: waitingOn)
    }
}

extension VersionVector {
    /// Origin by origin, the lesser of the two (an origin one lacks: none).
    func leastWith(_ other: VersionVector) -> VersionVector {
        var least = VersionVector()
        for (origin, sequence) in sequences.pairs {
            let theirs = other[origin]
            if min(sequence, theirs) > 0 { least.advance(origin: origin, to: min(sequence, theirs)) }
        }
        return least
    }
}

/// Whom a node takes data from once it has compacted forget records: the members that held every
/// record it dropped (they count and covered it each time), and any other that has since said it
/// dropped everything dated at or before the newest record dropped. Anyone else may hold data
/// about a person whose erasure this node no longer remembers. Pure, like the plan.
public enum ForgetCompactionGate {
    public static func takesData(from peer: UInt64, state: ForgetCompactionState, cleared: Int64?) -> Bool {
        guard let through = state.compactedThrough else { return true }
        return state.trusted.contains(peer) || (cleared ?? .min) >= through
    }

    /// The members trusted after a compaction under `plan`: those that count and were trusted
    /// (everyone, before the first compaction) or have cleared (`cleared`).
    public static func trustedAfterCompaction(plan: ForgetCompactionPlan, state: ForgetCompactionState, cleared: Set<UInt64>) -> Set<UInt64> {
        let counted = Set(plan.counted)
        guard state.compactedThrough != nil else { return counted }
        return state.trusted.union(cleared).intersection(counted)
    }
}
