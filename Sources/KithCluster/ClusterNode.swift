import KithCRDT
import KithPolicy
import KithProfile
import KithReplication
import KithStore

/// Timing and sizes of replication, in milliseconds and bytes.
public struct ReplicationSettings: Sendable {
    /// How often each peer's log is pulled when nothing else prompts it (anti-entropy).
    public var pullInterval: Int64 = 500
    /// A pull not answered within this long is given up (the next one starts over).
    public var pullTimeout: Int64 = 2_000
    /// Bytes of changes one reply may carry.
    public var pullBudget: UInt32 = 256 * 1024
    /// Log entries read per reply at most.
    public var scanLimit = 1_024
    /// How often this node compares digest trees with one peer (each peer in turn), when its
    /// log pulls from that peer have caught up, and with a peer that comes back. 0 turns these
    /// off (a comparison asked for with `requestTreeComparisons` still runs).
    public var antiEntropyInterval: Int64 = 30_000
    /// A step of a tree comparison not answered within this long ends the comparison.
    public var antiEntropyTimeout: Int64 = 5_000
    /// Tree nodes asked about in one digest request.
    public var digestNodesPerRequest = 64
    /// Bytes of document states one documents message may carry (at least one state travels).
    public var documentBudget = 1 << 20
    /// How many core replicas the cluster has, if configured: write and read levels count
    /// against the larger of this and the core members known (`replicaCount`).
    public var replicas: Int?
    /// A member silent for longer than this no longer holds log truncation back; when it comes
    /// back it is brought up to date by a tree comparison (`LogTruncationPlan`). 30 days.
    public var maxOfflineWindow: Int64 = 30 * 86_400_000
    /// How often this node looks for log entries every member has read. 0 never truncates.
    public var truncationInterval: Int64 = 10_000
    /// Change-log records dropped per write at most (a truncation never holds the writer long);
    /// forget records too.
    public var truncationChunk = 1_000
    /// Forget compaction (docs/replication.md, "Compacting forget entries"): the bounds of its
    /// horizon; nil keeps every forget record (no `maxEventAge` configured).
    public var forgetCompaction: ForgetCompactionPlan.Bounds?
    /// How often a pass over the forget set starts (1 h), and how many records each of its
    /// steps reads (one step every `truncationInterval`; the writer is never held long).
    public var forgetCompactionInterval: Int64 = 3_600_000
    public var forgetCompactionScan = 10_000
    /// Identifiers (with everything linked to them), from at most `clearingBuckets` digest-tree
    /// buckets of 1,024, a quarantined node clears per write when told to drop its old data:
    /// about 20 ms of the writer a step on the bench store (docs/benchmarks.md, "Forget compaction").
    public var clearingIdentifiers = 100
    public var clearingBuckets = 8
    /// This member is a scoped site (docs/replication.md, "Scope"): its scope and purposes. Nil:
    /// it holds everything.
    public var site: SiteSettings?
    /// What a scoped site's purposes may see: a core answering site syncs projects by it.
    public var policy: Policy = .builtIn
    /// How often a scoped site syncs with a core (at once while the core has more to send).
    public var siteSyncInterval: Int64 = 1_000
    /// Identifiers a core's sweep for a site looks at per sync until it has swept every
    /// identifier once (the site's first sync), and after.
    public var siteSweepFirst = 2_000
    public var siteSweep = 200
    /// Documents of a site's report one sync carries (about 40 bytes each): a larger report
    /// goes in pages, one a sync, so that no sync is larger than a frame may be.
    public var siteReportPage = 50_000
    /// Every this many syncs of a site, a core looks at every document it reported again, not
    /// only at what its log wrote since (`SiteTracking.projected`).
    public var siteFullCheck = 60

    public init() {}
}

/// What a replicated write did: how many changes or documents it changed (and how many entries
/// it applied ahead of their place), or that it was refused on the writer's own reading of the
/// store (a push with a gap, a stale pull reply).
public struct ReplicatedWrite: Sendable, Equatable {
    public var changed = 0
    public var appliedAhead = 0
    public var refused = false
    /// Pushes of a batch refused for a gap (the next pull fills it).
    public var refusedPushes = 0
    /// Work done in bounded steps has more to do (a forget-compaction pass goes on).
    public var more = false
    /// What a scoped site did with a core's update.
    public var site: SiteUpdateOutcome?

    public init(changed: Int = 0, appliedAhead: Int = 0, refused: Bool = false, refusedPushes: Int = 0, more: Bool = false) {
        self.changed = changed
        self.appliedAhead = appliedAhead
        self.refused = refused
        self.refusedPushes = refusedPushes
        self.more = more
    }

    public static let refusal = ReplicatedWrite(refused: true)
}

/// How a node's writes reach its store: `write` runs a write (on whatever thread owns the
/// store's write transactions), then `then` runs with its result on the node's own thread.
/// A shell that throws from it (or from `then`) reports the error as `receive` and `tick` do.
public typealias StoreWriter = (
    _ write: @escaping @Sendable () throws -> ReplicatedWrite, _ then: @escaping (ReplicatedWrite) throws -> Void
) throws -> Void

/// One cluster member's replication logic over its store: membership (SWIM), the push of changes
/// it accepts, and the pull of what it lacks from every peer. It does no I/O of its own: messages
/// go out through `send`, writes through `write`, time comes in as arguments, so the same code
/// runs on real sockets (`kith serve`, where a write is a job of the node's one writer and its
/// continuation comes back through the replication thread's inbox) and in the deterministic
/// simulation (where a write runs at once). It reads the store directly: reads never wait.
public final class ClusterNode {
    public let store: any ReplicaStore
    public private(set) var membership: Membership
    public let settings: ReplicationSettings
    let send: (_ address: String, _ message: PeerMessage) -> Void
    let write: StoreWriter

    /// Writes at once on the calling thread, then continues (the simulation, tests).
    public static func writeAtOnce(_ write: @escaping @Sendable () throws -> ReplicatedWrite, then: @escaping (ReplicatedWrite) throws -> Void) throws
    {
        try then(try write())
    }
    var peers: [UInt64: PeerState] = [:]
    /// Pushes from each peer waiting to be written, and whether a write of them is in flight.
    private var pushes: [UInt64: PendingPushes] = [:]

    struct PendingPushes {
        var queued: [PushedChanges] = []
        var writing = false
        var address = ""
    }
    /// Own changes up to this log position have been pushed (or were there before start).
    private var pushedThrough: UInt64
    /// The origin sequence of the last own change pushed: a push may be applied by a peer that
    /// holds everything of ours up to it. After a start this is the log position, conservatively.
    private var lastPushedOwn: UInt64
    public internal(set) var counters = Counters()
    /// The number of the last pull request sent.
    private var lastRequest: UInt64 = 0
    /// The tree comparison in flight, if any, and when each peer was last compared.
    var antiEntropy = AntiEntropyState()
    /// Callers waiting for replicas or for their session (`startWait`).
    var waits = PendingWaits()
    /// Log truncation: when it was last planned, its plan, and peers brought up to date by
    /// comparison.
    var truncation = TruncationState()
    /// Forget compaction: its last plan, its write in flight, the store's state of it.
    var forgetCompaction = ForgetCompactionTracking()
    /// A scoped site's sync in flight; a core's memory of each scoped site.
    var siteSyncing = SiteSyncing()
    var sites: [UInt64: SiteTracking] = [:]
    /// Peers' clocks as measured from membership round trips.
    public private(set) var clockOffsets: ClockOffsets
    private let hasSeeds: Bool
    private let startedAt: Int64

    public struct Counters: Sendable, Equatable {
        public var pullsSent = 0
        public var changesReceived = 0
        public var changesApplied = 0
        public var pushesSent = 0
        public var pushesRejected = 0
        /// Write transactions that applied pushes (several pushes may share one).
        public var pushBatches = 0
        public var stalePullRepliesDropped = 0
        public var appliedAhead = 0
        public var antiEntropyStarted = 0
        public var antiEntropyCompleted = 0
        public var antiEntropyAbandoned = 0
        /// Document states sent and received by tree comparisons, and how many of those
        /// received changed something here (a repair).
        public var documentsSent = 0
        public var documentsReceived = 0
        public var documentsRepaired = 0
        /// Documents too large for one message: left to the change log (docs/replication.md).
        public var documentsTooLarge = 0
        /// Members this node saw go down (dead, away or left): a false death shows here.
        public var membersDown = 0
        /// Change-log records this node dropped, every member having read them, and truncations
        /// that failed (tried again at the next plan).
        public var logRecordsTruncated = 0
        public var logTruncationsFailed = 0
        /// Pulls answered with `logTruncated` (sent), and such answers received.
        public var truncatedLogRepliesSent = 0
        public var truncatedLogRepliesReceived = 0
        /// Tree comparisons that brought a peer behind this node's truncated log up to date.
        public var resyncsCompleted = 0
        /// Peers' logs this node resumed reading after such a comparison (its own log then
        /// counts as truncated through its last entry).
        public var logsResumed = 0
        /// Forget records this node dropped, and compaction steps that failed.
        public var forgetRecordsCompacted = 0
        public var forgetCompactionsFailed = 0
        /// Messages from quarantined peers not taken (their pulls answered with the time to
        /// drop through), and quarantines this node cleared (or failed to) when told.
        public var quarantinedMessagesRefused = 0
        public var quarantinesCleared = 0
        public var quarantineClearsFailed = 0
        /// Times to drop through refused as too recent (a peer's clock or configuration wrong).
        public var quarantineClearsRefused = 0
        /// Site syncs: on a scoped site, sent, completed, given up and stale answers dropped,
        /// with the documents joined, purged and replaced; on a core, refused (not from a
        /// scoped member, or purposes this node's policy does not define) and documents sent.
        /// Data refused because it would bring a scoped site another member's raw log.
        public var siteSyncsSent = 0
        public var siteSyncsCompleted = 0
        public var siteSyncsAbandoned = 0
        public var staleSiteUpdatesDropped = 0
        public var siteUpdatesFailed = 0
        /// Syncs a core answered by asking for the whole report (it did not know the summary),
        /// and syncs sent with the summary alone (the core took the same report before).
        public var siteReportsWanted = 0
        public var siteSummariesSent = 0
        public var siteDocumentsJoined = 0
        public var sitePurged = 0
        public var siteReplaced = 0
        public var siteSyncsRefused = 0
        public var siteDocumentsSent = 0
        /// Identifiers whose components a core looked at for its answers to site syncs.
        public var siteDocumentsLooked = 0
        public var rawDataRefused = 0
        /// On a scoped site: reports worked out (read and hashed) for its syncs; an idle site
        /// reuses its last.
        public var siteReportsWorkedOut = 0
    }

    /// What this node knows of one peer.
    public struct PeerState: Sendable {
        public var lastContact: Int64?
        public var pullSentAt: Int64?
        public var lastPullCompleted: Int64?
        /// The peer's version vector and its position in our log, as of its last pull from us.
        public var versions: VersionVector?
        public var cursor: UInt64 = 0
        /// How far the peer said (in its last pull) it dropped its old data when quarantined.
        public var cleared: Int64?
        /// This node's own changes the peer holds durably, through this origin sequence (from
        /// its acknowledgements of pushes and from its pulls).
        public var holdsOwnThrough: UInt64 = 0
        /// The last pull request whose chain of replies ended with nothing more to send: then
        /// this node held everything the peer held when it answered that request.
        public var caughtUpThrough: UInt64 = 0
        /// The request of the last pull sent to the peer (a chain of replies continues under it),
        /// and when the chain under it began.
        public var lastPullRequest: UInt64 = 0
        public var lastPullStarted: Int64?
        /// When the newest chain of pulls that ended with nothing more to send began: this node
        /// holds everything the peer's log held then (what a forget compaction needs of a scoped
        /// site, whose log is all it ever sends).
        public var logReadAsOf: Int64?
        /// Whether the last reply this node sent to the peer's pulls left nothing more to send:
        /// the peer holds this node's log as of then (unless the reply is lost; it pulls again).
        public var hasReadOurLog = false
        /// Set when the peer answered a pull with `logTruncated`: its log is gone through this
        /// position, and it is comparing trees with this node before it answers from its log.
        public var truncatedPast: UInt64?

        /// Whether this node has read everything the peer's log held when last asked: the
        /// newest pull's chain ended with nothing more, no pull is in flight, and the peer has
        /// not come back since (that clears `lastPullCompleted`). A pull that timed out
        /// mid-backlog does not count: its chain never ended.
        public var isCaughtUp: Bool {
            pullSentAt == nil && lastPullCompleted != nil && lastPullRequest > 0 && caughtUpThrough >= lastPullRequest
        }
    }

    public var id: UInt64 { membership.me.id }

    /// Advertises this node's HTTP API address to the cluster (before it starts).
    public func advertise(api: String) { membership.advertise(api: api) }

    public init(
        store: any ReplicaStore, me: Member, seeds: [String], membershipSettings: MembershipSettings = MembershipSettings(),
        settings: ReplicationSettings = ReplicationSettings(), clockSettings: ClockSettings = ClockSettings(), startedAt: Int64 = .min / 2,
        seed: UInt64, write: @escaping StoreWriter = ClusterNode.writeAtOnce, send: @escaping (String, PeerMessage) -> Void
    ) throws {
        self.store = store
        self.settings = settings
        self.send = send
        self.write = write
        clockOffsets = ClockOffsets(settings: clockSettings)
        precondition(me.scoped == (settings.site != nil), "member \(me.name) scoped: \(me.scoped), but site settings: \(settings.site != nil)")
        hasSeeds = !seeds.filter { $0 != me.address }.isEmpty
        self.startedAt = startedAt
        membership = Membership(me: me, seeds: seeds, settings: membershipSettings, seed: seed)
        pushedThrough = try store.versionVector()[me.id]
        lastPushedOwn = pushedThrough
    }

    // MARK: Inputs

    /// Advances time: membership probes, due pulls, and the push of any new own changes.
    /// `now` drives every timer (probes, suspicions, pulls, comparisons): the shell passes a
    /// clock that never jumps. `wall` is the wall clock, which stamps membership messages so that
    /// peers measure it; nil when `now` is the wall clock too (the simulation). A wall clock set
    /// back by hours must not stop the timers for hours, and one set right must be measured anew.
    public func tick(now: Int64, wall: Int64? = nil) throws {
        if let wall { clockOffsets.observe(wall: wall, monotonic: now) }
        perform(membership.tick(now: now, wall: wall), now: now)
        try pullOneDuePeer(now: now)
        try pushOwnChanges()
        try compareTreesIfDue(now: now)
        try truncateLogIfDue(now: now)
        try compactForgetRecordsIfDue(now: now, wall: wall ?? now)
        try resumeClearingIfNeeded()
        try syncSiteIfDue(now: now)
    }

    /// The reachable peers this node exchanges whole logs and document states with: none for a
    /// scoped site (it takes no raw log: site syncs bring it its customers), and never a scoped
    /// site, which may hold none of it. A scoped site's own log is still pulled (`logPeers`).
    var dataPeers: [Member] {
        membership.me.scoped ? [] : membership.reachable.filter(\.holdsEverything)
    }

    /// The reachable peers whose logs this node pulls: none for a scoped site; every one for a
    /// core; for any other member every one but the scoped sites, whose writes reach it through
    /// the cores' logs (only the cores can tell a site it is quarantined, so only they take its
    /// data: docs/replication.md, "Compacting forget entries").
    var logPeers: [Member] {
        membership.me.scoped ? [] : membership.reachable.filter { answersSiteSyncs || !$0.scoped }
    }

    /// Pulls from one peer at a time, the one waited on longest: two pulls in flight at once would
    /// each bring the same missing changes (both are answered against the same version vector).
    private func pullOneDuePeer(now: Int64) throws {
        let reachable = logPeers
        for peer in reachable {
            guard let sent = peers[peer.id]?.pullSentAt else { continue }
            if now - sent < settings.pullTimeout { return }
            peers[peer.id]?.pullSentAt = nil
        }
        // A quarantined peer is pulled all the same, and what it answers is refused (its log may
        // name people whose erasures are compacted): a pull carries how far this node cleared,
        // and its answer is how this node learns it must clear. Two members that each
        // quarantined the other (one back from away compacted before it heard the rest) would
        // otherwise wait for each other's pull for good (the simulation found it). Not while
        // this node clears: it takes nothing in, and its pulls could not yet say how far.
        guard try !isClearing else { return }
        let due = reachable.filter { peer in peers[peer.id]?.lastPullCompleted.map { now - $0 >= settings.pullInterval } ?? true }
        guard let next = due.min(by: { (peers[$0.id]?.lastPullCompleted ?? .min) < (peers[$1.id]?.lastPullCompleted ?? .min) }) else { return }
        try pull(from: next, now: now)
    }

    /// Sends the changes this node accepted since the last push to every reachable peer.
    public func pushOwnChanges() throws {
        let entries = try durableChanges(after: pushedThrough, through: store.durableLogSequence())
        guard let last = entries.last else { return }
        let own = entries.filter { $0.origin == id }
        pushedThrough = last.sequence
        guard let newest = own.last else { return }
        let message = PeerMessage.push(previous: lastPushedOwn, entries: own)
        lastPushedOwn = newest.originSequence
        for peer in membership.reachable where membership.me.scoped ? peer.answersSiteSyncs : peer.holdsEverything {
            counters.pushesSent += 1
            send(peer.address, message)
        }
        // A node that knows no member yet (restarted, and not heard back from its seeds) pushes
        // to the seeds: it may be heard where it cannot hear, and a write only it holds would
        // otherwise stay here while it is taken for silent, quarantined and made to drop it
        // (the simulation's deaf member, restarted, lost acknowledged writes that way).
        if membership.members.isEmpty {
            for seed in membership.seeds {
                counters.pushesSent += 1
                send(seed, message)
            }
        }
    }

    /// Handles one message from peer `sender` (its node id, from the authenticated frame).
    /// `now` and `wall` as for `tick`.
    public func receive(_ message: PeerMessage, from sender: UInt64, address: String, now: Int64, wall: Int64? = nil) throws {
        peers[sender, default: PeerState()].lastContact = now
        if bringsRawData(message, from: sender) { return counters.rawDataRefused += 1 }
        switch message {
        case .membership(let message): perform(membership.receive(message, from: address, now: now, wall: wall), now: now)
        case .pull(let cursor, let versions, let budget, let request, let cleared):
            peers[sender]?.versions = versions
            peers[sender]?.cursor = cursor
            let trusted = try heardCleared(cleared, from: sender)
            acknowledged(by: sender, through: versions[id])
            if !trusted.now {
                counters.quarantinedMessagesRefused += 1
                let through = try store.logExtent().truncatedThrough
                return send(
                    replyAddress(sender, address),
                    .logTruncated(through: through, request: request, dropThrough: try compactionState().compactedThrough))
            }
            // A peer that has just cleared lacks what it dropped that was not erased: compare.
            if !trusted.before { antiEntropy.resyncRequested.insert(sender) }
            switch try pullAnswer(to: cursor, from: sender) {
            case .fromLog: break
            case .truncated(let through):
                counters.truncatedLogRepliesSent += 1
                return send(replyAddress(sender, address), .logTruncated(through: through, request: request))
            case .resumed(let position):
                return send(replyAddress(sender, address), .logResumed(from: cursor, through: position, request: request))
            case .skipped(let position):
                return send(
                    replyAddress(sender, address), .changes(from: cursor, through: position, entries: [], more: true, ahead: [], request: request))
            }
            let answer = try reply(after: cursor, lacking: versions, budget: budget, request: request)
            if case .changes(_, _, _, let more, _, _) = answer { peers[sender]?.hasReadOurLog = !more }
            send(replyAddress(sender, address), answer)
            // Read repair, both ways: a puller that holds what this node lacks is pulled from now.
            if !membership.me.scoped, try holdsLess(than: versions), peers[sender]?.pullSentAt == nil, let member = membership.members[sender] {
                try pull(from: member, now: now)
            }
        case .changes(let from, let through, let entries, let more, let ahead, let request):
            guard try acceptsData(from: sender) else {
                // The pull is over (the next one waits its interval), and nothing was read.
                counters.quarantinedMessagesRefused += 1
                peers[sender]?.pullSentAt = nil
                peers[sender]?.lastPullCompleted = now
                return
            }
            counters.changesReceived += entries.count
            let store = self.store
            // The writer decides staleness: an earlier reply's write may still be queued.
            try write({
                guard from <= (try store.cursor(of: sender)) else { return .refusal }
                var written = ReplicatedWrite()
                if !ahead.isEmpty {
                    let held = try store.versionVector()
                    for entry in ahead where !held.covers(origin: entry.origin, sequence: entry.originSequence) {
                        try store.applyAhead(entry)
                        written.appliedAhead += 1
                    }
                }
                written.changed = try store.applyReplicated(entries, from: sender, through: through)
                return written
            }) { [self] written in
                guard !written.refused else { return counters.stalePullRepliesDropped += 1 }
                counters.appliedAhead += written.appliedAhead
                try pulled(written.changed, from: sender, more: more, request: request, now: now)
            }
        case .push(let previous, let entries):
            guard try acceptsData(from: sender) else { return counters.quarantinedMessagesRefused += 1 }
            // Pushes that arrive while one of the sender's is being written wait, and go in one
            // transaction after it: a peer under load applies one commit (one sync) for many.
            pushes[sender, default: PendingPushes()].queued.append(PushedChanges(previous: previous, entries: entries))
            pushes[sender]?.address = replyAddress(sender, address)
            try writePushes(from: sender)
        case .acknowledge(let through):
            acknowledged(by: sender, through: through)
        case .digestRequest(let request, let nodes):
            guard try acceptsData(from: sender) else { return counters.quarantinedMessagesRefused += 1 }
            send(replyAddress(sender, address), .digestReply(request: request, children: try differingChildren(of: nodes)))
        case .digestReply(let request, let children):
            try received(children, request: request, from: sender, now: now)
        case .documents(let request, let states, let wanted):
            guard try acceptsData(from: sender) else { return counters.quarantinedMessagesRefused += 1 }
            try received(states, wanted: wanted, request: request, from: sender, address: address, now: now)
        case .logTruncated(let through, _, let dropThrough):
            if let dropThrough { try clearForQuarantine(through: dropThrough, wall: wall ?? now) }
            // The pull is over, but nothing was read: not caught up. The peer compares trees
            // with this node and then answers the next pull from its log.
            counters.truncatedLogRepliesReceived += 1
            peers[sender]?.pullSentAt = nil
            peers[sender]?.lastPullCompleted = now
            peers[sender]?.truncatedPast = through
            if membership.members[sender]?.scoped == true { fellBehindSiteLog(sender, through: through) }
        case .siteSync(let request, let scope, let purposes, let summary, let page, let cleared):
            try answerSiteSync(
                from: sender, address: address, request: request, scope: scope, purposes: purposes, summary: summary, page: page,
                cleared: cleared, now: wall ?? now)
        case .siteUpdate(let request, let components, let purge, let more, let reportWanted, let dropThrough):
            try receivedSiteUpdate(
                request: request, components: components, purge: purge, more: more, reportWanted: reportWanted, dropThrough: dropThrough,
                from: sender, now: now, wall: wall ?? now)
        case .logResumed(let from, let through, let request):
            let store = self.store
            try write({
                guard from == (try store.cursor(of: sender)) else { return .refusal }
                try store.resumeLog(from: sender, at: through)
                return ReplicatedWrite()
            }) { [self] written in
                guard !written.refused else { return counters.stalePullRepliesDropped += 1 }
                counters.logsResumed += 1
                try pulled(0, from: sender, more: true, request: request, now: now)
            }
        }
    }

    /// Whether `message` would bring raw data (log entries, whole document states, tree
    /// digests) between a scoped site and another member — a site's own log to a core excepted:
    /// never taken, whatever a peer with a stale view of the membership sends.
    private func bringsRawData(_ message: PeerMessage, from sender: UInt64) -> Bool {
        let scopedPeer = membership.members[sender]?.scoped ?? false
        switch message {
        case .changes, .push: return membership.me.scoped || (scopedPeer && !answersSiteSyncs)
        case .digestRequest, .digestReply, .documents: return membership.me.scoped || scopedPeer
        case .membership, .pull, .acknowledge, .logTruncated, .logResumed, .siteSync, .siteUpdate: return false
        }
    }

    /// Writes the pushes waiting from `sender`, unless a write of its pushes is in flight (its
    /// completion writes them then).
    private func writePushes(from sender: UInt64) throws {
        guard var pending = pushes[sender], !pending.writing, !pending.queued.isEmpty else { return }
        let batch = pending.queued
        pending.queued = []
        pending.writing = true
        pushes[sender] = pending
        let store = self.store
        try write({
            let (changed, refused) = try store.applyPushes(batch, from: sender)
            return ReplicatedWrite(changed: changed, refusedPushes: refused)
        }) { [self] written in
            pushes[sender]?.writing = false
            counters.pushesRejected += written.refusedPushes
            counters.changesApplied += written.changed
            counters.pushBatches += 1
            // Applied (durably) or not, the sender learns how far this node holds its changes.
            if let address = pushes[sender]?.address {
                send(address, .acknowledge(through: try self.store.versionVector()[sender]))
            }
            try writePushes(from: sender)
        }
    }

    /// A pull reply applied: the pull is done, and its chain goes on or has caught up.
    private func pulled(_ applied: Int, from sender: UInt64, more: Bool, request: UInt64, now: Int64) throws {
        counters.changesApplied += applied
        peers[sender]?.pullSentAt = nil
        peers[sender]?.lastPullCompleted = now
        peers[sender]?.truncatedPast = nil
        if more, let member = membership.members[sender] {
            // The chain continues under the request it answers.
            try pull(from: member, now: now, request: request)
        } else {
            let previous = peers[sender]?.caughtUpThrough ?? 0
            peers[sender]?.caughtUpThrough = max(previous, request)
            // Only the newest chain's start is known; an older chain ending late says nothing newer.
            if let state = peers[sender], request == state.lastPullRequest, let started = state.lastPullStarted {
                peers[sender]?.logReadAsOf = max(state.logReadAsOf ?? .min, started)
            }
        }
    }

    /// Whether a peer holding `versions` holds changes this node lacks: the rule a session read
    /// applies (`SessionCoverage`), since a node's entry for its own origin is a log position.
    private func holdsLess(than versions: VersionVector) throws -> Bool {
        try !SessionCoverage.missing(versions, in: store, origin: id).isEmpty
    }

    private func acknowledged(by peer: UInt64, through: UInt64) {
        peers[peer, default: PeerState()].holdsOwnThrough = max(peers[peer]?.holdsOwnThrough ?? 0, through)
    }

    /// The peers known to hold this node's own change `originSequence` durably.
    public func peersHolding(ownChange originSequence: UInt64) -> Set<UInt64> {
        Set(peers.filter { $0.value.holdsOwnThrough >= originSequence }.map(\.key))
    }

    /// Leaves the cluster: tells the others, then stays quiet.
    public func leave() { perform(membership.leave(), now: 0) }

    /// Joins through `address` now.
    public func join(_ address: String) { perform(membership.join(address), now: 0) }

    /// Starts a pull from `peer` now (repair, a member back from away, a quorum read); returns
    /// its request number, which `caughtUpThrough` reaches when the peer has sent everything.
    @discardableResult
    public func pull(from peer: Member, now: Int64) throws -> UInt64 {
        lastRequest += 1
        try pull(from: peer, now: now, request: lastRequest)
        return lastRequest
    }

    private func pull(from peer: Member, now: Int64, request: UInt64) throws {
        peers[peer.id, default: PeerState()].pullSentAt = now
        if peers[peer.id]?.lastPullRequest != request { peers[peer.id]?.lastPullStarted = now }
        peers[peer.id]?.lastPullRequest = request
        counters.pullsSent += 1
        // A peer whose data this node refuses (quarantined) is asked for as little as it can
        // send: the pull is for what it says, the answer is dropped.
        let budget = try takesData(from: peer.id) ? settings.pullBudget : 1
        send(
            peer.address,
            .pull(
                cursor: try store.cursor(of: peer.id), versions: try store.versionVector(), budget: budget, request: request,
                cleared: try compactionState().clearedThrough))
    }

    /// Per reachable or known peer: what this node knows of it.
    public var peerStates: [(member: Member, state: PeerState)] {
        membership.members.values.sorted { $0.name < $1.name }.map { ($0, peers[$0.id] ?? PeerState()) }
    }

    /// How much of this node's log `peer` still lacks, in changes and encoded bytes, as of its
    /// last pull (nil if it never pulled). Reads at most `limit` log entries.
    public func lag(of peer: UInt64, limit: Int = 100_000) throws -> (changes: Int, bytes: Int)? {
        guard let state = peers[peer], let versions = state.versions else { return nil }
        var changes = 0, bytes = 0
        for entry in try store.changes(after: state.cursor, limit: limit)
        where !versions.covers(origin: entry.origin, sequence: entry.originSequence) {
            var writer = BinaryWriter(capacity: 256)
            entry.encode(to: &writer)
            changes += 1
            bytes += writer.bytes.count
        }
        return (changes, bytes)
    }

    // MARK: Helpers

    /// Entries of this node's log after `sequence` and through `durable` (the store's
    /// `durableLogSequence`: on disk for good), up to the scan limit: a peer that read an entry a
    /// crash could still undo would skip the different change that takes its sequence number
    /// after the restart.
    func durableChanges(after sequence: UInt64, through durable: UInt64) throws -> [ChangeEntry] {
        guard durable > sequence else { return [] }
        return try store.changes(after: sequence, limit: settings.scanLimit).filter { $0.sequence <= durable }
    }

    /// The changes after `cursor` in this node's log that a peer holding `versions` lacks, up to
    /// about `budget` bytes.
    private func reply(after cursor: UInt64, lacking versions: VersionVector, budget: UInt32, request: UInt64) throws -> PeerMessage {
        let durable = try store.durableLogSequence()
        let scanned = try durableChanges(after: cursor, through: durable)
        var entries: [ChangeEntry] = []
        var bytes = 0
        var through = cursor
        for entry in scanned {
            if !versions.covers(origin: entry.origin, sequence: entry.originSequence) {
                var writer = BinaryWriter(capacity: 256)
                entry.encode(to: &writer)
                if bytes + writer.bytes.count > Int(budget) && !entries.isEmpty { break }
                bytes += writer.bytes.count
                entries.append(entry)
            }
            through = entry.sequence
        }
        let more = through < (scanned.last?.sequence ?? cursor) || scanned.count == settings.scanLimit
        // Erasures and consent decisions further down a backlog go first: a customer is forgotten,
        // or a withdrawal holds, before the rest arrives.
        let ahead =
            more
            ? try store.entriesAhead(after: through, limit: 64).filter {
                $0.sequence <= durable && !versions.covers(origin: $0.origin, sequence: $0.originSequence)
            } : []
        return .changes(from: cursor, through: through, entries: entries, more: more, ahead: ahead, request: request)
    }

    /// Whether this node's clock may date writes and erasures now (`ClockOffsets.check`).
    public func clockCheck(now: Int64) -> ClockCheck {
        let core = membership.members.values.filter { $0.role == .core && $0.status != .left }.map(\.id).sorted()
        return clockOffsets.check(coreMembers: core, hasSeeds: hasSeeds, isEdge: membership.me.role == .edge, startedAt: startedAt, now: now)
    }

    func replyAddress(_ sender: UInt64, _ address: String) -> String {
        membership.members[sender]?.address ?? address
    }

    private func perform(_ directives: [Membership.Directive], now: Int64) {
        for directive in directives {
            switch directive {
            case .send(let address, let message): send(address, .membership(message))
            case .memberUp(let member):
                // Back or new: exchange logs now rather than at the next interval, then compare
                // trees once the log has caught up (what it missed may be in no log).
                peers[member.id, default: PeerState()].lastPullCompleted = nil
                peers[member.id]?.hasReadOurLog = false
                if settings.antiEntropyInterval > 0 { antiEntropy.requested.insert(member.id) }
            case .memberDown(let member):
                peers[member.id]?.pullSentAt = nil
                counters.membersDown += 1
            case .clockSample(let sample): clockOffsets.record(sample)
            }
        }
    }
}
