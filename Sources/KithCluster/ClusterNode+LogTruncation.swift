import KithReplication
import KithStore

/// What a node keeps between the steps of log truncation.
struct TruncationState {
    /// When this node began counting its members' silence (its first tick).
    var since: Int64?
    var lastPlanned: Int64?
    /// The last plan made, for `kith sync status`.
    var plan: LogTruncationPlan?
    /// A truncation write is queued or running.
    var writing = false
    /// Peer → the position in this node's log through which a completed tree comparison brought
    /// it: its pulls from behind the truncated part are answered from there.
    var resynced: [UInt64: UInt64] = [:]
}

extension ClusterNode {
    /// How to answer a pull from `cursor`: from the log, if it holds everything after the
    /// cursor; on a scoped site, by moving the cursor past what the puller already holds; else by moving the peer's cursor to where a finished tree comparison with it
    /// reached; else by saying the log is truncated, and asking for that comparison
    /// (`compareTreesIfDue` runs it first).
    enum PullAnswer: Equatable {
        case fromLog
        case resumed(at: UInt64)
        case truncated(through: UInt64)
        /// The puller lacks none of the truncated entries: a reply with none moves its cursor on.
        case skipped(to: UInt64)
    }

    func pullAnswer(to cursor: UInt64, from peer: UInt64) throws -> PullAnswer {
        let extent = try store.logExtent()
        let truncated = extent.truncatedThrough
        guard cursor < truncated else {
            truncation.resynced[peer] = nil
            return .fromLog
        }
        if let reached = truncation.resynced[peer], reached >= truncated { return .resumed(at: reached) }
        // No tree comparison with a scoped site: its log holds only its own changes, so a
        // puller that holds every one the log dropped (from another member) lacks nothing
        // before the truncation point, and reads on from there. One that does not is told the
        // log is truncated until it has them from a core.
        if membership.me.scoped, !extent.rebuilt, let versions = peers[peer]?.versions, versions.covers(extent.floor) {
            return .skipped(to: truncated)
        }
        if membership.me.scoped { return .truncated(through: truncated) }
        antiEntropy.resyncRequested.insert(peer)
        return .truncated(through: truncated)
    }

    /// Every `truncationInterval`: plans which log entries every member has read, and drops up to
    /// `truncationChunk` records of them through the writer (planning again at once while more
    /// are left).
    func truncateLogIfDue(now: Int64) throws {
        let since = truncation.since ?? now
        truncation.since = since
        guard settings.truncationInterval > 0, !truncation.writing else { return }
        if let last = truncation.lastPlanned, now - last < settings.truncationInterval { return }
        truncation.lastPlanned = now
        let extent = try store.logExtent()
        // A scoped site's log is the only way its writes ever leave it (its documents never do):
        // a member silent past the window still holds it back there, or a site away that long
        // would drop every write it took meanwhile (the forget-compaction simulation found it).
        // A member reaped from membership, or that left, no longer counts.
        let plan = LogTruncationPlan.plan(
            log: extent, members: membership.members.values.filter(readsOurLog), contacts: memberContacts,
            since: since, now: now,
            maxOfflineWindow: membership.me.scoped ? .max : settings.maxOfflineWindow)
        truncation.plan = plan
        guard plan.truncates(extent) else { return }
        truncation.writing = true
        let store = self.store, through = plan.through, chunk = settings.truncationChunk
        // A failed truncation is counted and tried again at the next plan: the continuation must
        // run on every path, or `writing` would stay set and the log would never shrink again.
        try write({
            do { return ReplicatedWrite(changed: try store.truncateLog(through: through, limit: chunk)) } catch { return .refusal }
        }) { [self] written in
            truncation.writing = false
            guard !written.refused else { return counters.logTruncationsFailed += 1 }
            counters.logRecordsTruncated += written.changed
            if written.changed == chunk { truncation.lastPlanned = nil }
        }
    }

    /// Whether scoped sites read this node's log (through their syncs) and it reads theirs: a
    /// core's, which answers them. Other members' logs no scoped site reads, and none holds their
    /// truncation back.
    var answersSiteSyncs: Bool { membership.me.answersSiteSyncs }

    /// Whether `member` reads this node's log, and so holds its truncation back: every member
    /// that holds everything, and on a core the scoped sites too (through their syncs). A scoped
    /// site's log only the cores read: its writes reach the other members through theirs.
    func readsOurLog(_ member: Member) -> Bool {
        if membership.me.scoped { return member.answersSiteSyncs }
        return member.holdsEverything || answersSiteSyncs
    }

    /// What each member last said, as the plans that wait on members read it.

    /// A scoped site reads this node's log through its syncs: this node looks at what its log
    /// wrote for the site (`SiteTracking.logCursor`), and keeps the entries it has not looked at
    /// yet, as for any member. (Dropping them forced a look at everything the site holds, and
    /// a new sweep of every identifier, each time the log was truncated past a site's cursor.)
    var memberContacts: [UInt64: MemberContact] {
        var contacts = peers.mapValues { state in
            MemberContact(
                lastHeard: state.lastContact, readThrough: state.versions == nil ? nil : state.cursor, versions: state.versions,
                logReadAsOf: state.logReadAsOf)
        }
        for (site, tracking) in sites { contacts[site, default: MemberContact(lastHeard: nil)].readThrough = tracking.logCursor }
        return contacts
    }

    /// The last truncation plan: who holds the log back, and how far each member has read.
    public var logTruncationPlan: LogTruncationPlan? { truncation.plan }

    /// A resync comparison with `peer` ended having swapped every differing document: the peer
    /// holds everything this node's log held through `through`.
    func resynced(_ peer: UInt64, through: UInt64) {
        truncation.resynced[peer] = max(truncation.resynced[peer] ?? 0, through)
        counters.resyncsCompleted += 1
    }

    /// A scoped site answered a pull from behind its truncated log: this node asks for a tree
    /// comparison with the core `SiteLogRecovery` names.
    func fellBehindSiteLog(_ site: UInt64, through: UInt64) {
        let cores = dataPeers.map { (id: $0.id, versions: peers[$0.id]?.versions) }
        if let core = SiteLogRecovery.coreToCompare(site: site, through: through, cores: cores) { antiEntropy.requested.insert(core) }
    }

    /// A finished comparison with a core that held a scoped site's changes through where the
    /// site truncated its log brought this node everything they wrote: it reads the site's log
    /// on from there, its own log counting as truncated (as after any resync: what the
    /// comparison brought is in none of its entries).
    func resumeSiteLog(_ site: UInt64, at position: UInt64) throws {
        let store = self.store
        try write({
            guard try store.cursor(of: site) < position else { return .refusal }
            try store.resumeLog(from: site, at: position)
            return ReplicatedWrite()
        }) { [self] written in
            guard !written.refused else { return }
            peers[site]?.truncatedPast = nil
            peers[site]?.lastPullCompleted = nil
            counters.logsResumed += 1
        }
    }
}
