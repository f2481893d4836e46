import KithCRDT
import KithReplication
import KithStore

/// What a node keeps between the steps of forget compaction.
struct ForgetCompactionTracking {
    /// When the last step was planned, and when the current (or last) pass started.
    var lastPlanned: Int64?
    var passStarted: Int64?
    /// A pass over the forget set is under way: its next step is due at the next interval.
    var passOpen = false
    /// The last plan made, for status.
    var plan: ForgetCompactionPlan?
    /// A compaction step is queued or running.
    var writing = false
    /// A clearing step is queued or running, and the highest floor to clear through.
    var clearing = false
    var clearingFloor: Int64?
    /// The store's compaction state, read at the first use and after each write that changes it.
    var state: ForgetCompactionState?
}

extension ClusterNode {
    /// The store's compaction state, as last read.
    func compactionState() throws -> ForgetCompactionState {
        if let state = forgetCompaction.state { return state }
        let state = try store.forgetCompactionState()
        forgetCompaction.state = state
        return state
    }

    /// Whether this node trusts `peer`'s data: yes, unless it compacted forget records while
    /// `peer` did not count and `peer` has not said it dropped everything dated at or before them
    /// since (`ForgetCompactionGate`). A peer not trusted is quarantined.
    public func takesData(from peer: UInt64) throws -> Bool {
        ForgetCompactionGate.takesData(from: peer, state: try compactionState(), cleared: peers[peer]?.cleared)
    }

    /// What `peer` says it dropped when quarantined (in its pulls; a scoped site in its syncs),
    /// recorded; and whether this node took its data before it said so and takes it now. A peer
    /// that has just become trusted lacks what it dropped that was not erased.
    func heardCleared(_ cleared: Int64?, from peer: UInt64) throws -> (before: Bool, now: Bool) {
        let before = try takesData(from: peer)
        peers[peer]?.cleared = cleared
        return (before, try takesData(from: peer))
    }

    /// Whether this node takes data in from `peer` now (pull replies, pushes, document states;
    /// and whether it pulls or compares): it trusts the peer, and it is not itself clearing.
    func acceptsData(from peer: UInt64) throws -> Bool {
        try !isClearing && takesData(from: peer)
    }

    /// A clearing is under way (told and not finished, or left unfinished by a restart): the
    /// node takes nothing in until it ends, or rows it had already cleared could come back beside
    /// others it has not cleared yet (the simulation found a link lost that way).
    var isClearing: Bool {
        get throws { try forgetCompaction.clearingFloor != nil || compactionState().clearing != nil }
    }

    /// A clearing a restart left unfinished goes on.
    func resumeClearingIfNeeded() throws {
        guard !forgetCompaction.clearing, let floor = try compactionState().clearing else { return }
        forgetCompaction.clearingFloor = max(forgetCompaction.clearingFloor ?? .min, floor)
        try clearingStep()
    }

    /// With forget compaction configured: every `forgetCompactionInterval` a pass over the
    /// forget set starts, one bounded step every `truncationInterval` until it ends. Each step is
    /// planned afresh (`ForgetCompactionPlan`: which records every member that counts holds) and
    /// carried out by the writer, which records whom this node trusts from then on.
    /// A scoped site compacts nothing itself: its forget records are those the cores send it
    /// with the documents it holds, and go when theirs do (`replaceDiffering`).
    func compactForgetRecordsIfDue(now: Int64, wall: Int64) throws {
        guard let bounds = settings.forgetCompaction, settings.truncationInterval > 0, !forgetCompaction.writing, !membership.me.scoped
        else { return }
        if forgetCompaction.passOpen {
            if let last = forgetCompaction.lastPlanned, now - last < settings.truncationInterval { return }
        } else if let started = forgetCompaction.passStarted, now - started < settings.forgetCompactionInterval {
            return
        }
        forgetCompaction.lastPlanned = now
        if !forgetCompaction.passOpen { forgetCompaction.passStarted = now }
        let plan = ForgetCompactionPlan.plan(
            members: Array(membership.members.values), contacts: memberContacts, own: try store.versionVector(), since: truncation.since ?? now,
            now: now, wall: wall, bounds: bounds, readsSites: answersSiteSyncs)
        forgetCompaction.plan = plan
        guard let held = plan.held else {
            forgetCompaction.passOpen = false
            return
        }
        let state = try compactionState()
        let cleared = Set(peers.filter { ForgetCompactionGate.takesData(from: $0.key, state: state, cleared: $0.value.cleared) }.map(\.key))
        let trusted = ForgetCompactionGate.trustedAfterCompaction(plan: plan, state: state, cleared: cleared)
        forgetCompaction.writing = true
        let store = self.store, horizon = plan.horizon, scan = settings.forgetCompactionScan, limit = settings.truncationChunk
        try write({
            // A failed step is counted and the pass tried again later: `writing` must be cleared on every path.
            do {
                let step = try store.compactForgetRecords(horizon: horizon, held: held, trusted: trusted, scan: scan, limit: limit)
                return ReplicatedWrite(changed: step.dropped, more: !step.passEnded)
            } catch { return .refusal }
        }) { [self] written in
            forgetCompaction.writing = false
            guard !written.refused else {
                forgetCompaction.passOpen = false
                return counters.forgetCompactionsFailed += 1
            }
            forgetCompaction.passOpen = written.more
            guard written.changed > 0 else { return }
            forgetCompaction.state = nil
            counters.forgetRecordsCompacted += written.changed
        }
    }

    /// A peer that compacted forget records quarantined this node: drop everything dated at or
    /// before `floor` (once), so that the next pulls say so and the peer takes data again. The
    /// writer does it in steps of at most `clearingIdentifiers` identifiers, one after another; a
    /// higher floor told meanwhile takes over. A floor within `maxOfflineWindow` of this node's
    /// wall clock cannot come from the rule (the horizon lies further back) and is refused: a
    /// peer whose clock or settings are wrong must not make this node drop recent data.
    func clearForQuarantine(through floor: Int64, wall: Int64) throws {
        guard floor <= wall - settings.maxOfflineWindow else { return counters.quarantineClearsRefused += 1 }
        guard (try compactionState().clearedThrough ?? .min) < floor else { return }
        forgetCompaction.clearingFloor = max(forgetCompaction.clearingFloor ?? .min, floor)
        // A step in flight goes on to the next with the highest floor told.
        guard !forgetCompaction.clearing else { return }
        try clearingStep()
    }

    private func clearingStep() throws {
        guard let floor = forgetCompaction.clearingFloor else { return }
        forgetCompaction.clearing = true
        let store = self.store, buckets = settings.clearingBuckets, identifiers = settings.clearingIdentifiers
        try write({
            do {
                let done = try store.clearForQuarantine(through: floor, buckets: buckets, identifiers: identifiers)
                return ReplicatedWrite(changed: 1, more: !done)
            } catch { return .refusal }
        }) { [self] written in
            forgetCompaction.clearing = false
            forgetCompaction.state = nil
            guard !written.refused else {
                // Tried again from where it stopped: at the next tick if a step is recorded, else
                // when the peer answers again.
                forgetCompaction.clearingFloor = nil
                return counters.quarantineClearsFailed += 1
            }
            if written.more || (forgetCompaction.clearingFloor ?? .min) > floor { return try clearingStep() }
            forgetCompaction.clearingFloor = nil
            counters.quarantinesCleared += 1
        }
    }

    /// The last forget-compaction plan.
    public var forgetCompactionPlan: ForgetCompactionPlan? { forgetCompaction.plan }
}
