import KithCRDT
import KithProfile
import KithReplication
import KithStore

/// A tree comparison with one peer: this node walks down both digest trees where they differ,
/// then swaps the document states of the forget keys that differ, both ways. See
/// docs/replication.md ("Anti-entropy by digest trees").
struct AntiEntropyState {
    struct Exchange {
        let peer: UInt64
        let address: String
        let request: UInt64
        var sentAt: Int64
        /// Tree nodes still to ask about, with this node's digests of them.
        var nodes: [DigestEntry] = []
        /// Forget keys whose states differ, still to swap.
        var keys: [[UInt8]] = []
        /// For a comparison that brings a peer behind this node's truncated log up to date: this
        /// node's last log position when it began. The tree is walked whole before any state is
        /// swapped, so that erasures can go first.
        var resyncThrough: UInt64?
        var keysOrdered = false
        /// States too large to send: the comparison did not bring the peer everything.
        var skipped = 0
        /// Scoped sites whose logs this node is behind, truncated through the position given,
        /// whose changes through there the peer held when the comparison began: once it ends,
        /// this node reads those logs on from there (`resumeSiteLog`).
        var siteLogs: [UInt64: UInt64] = [:]
    }

    var exchange: Exchange?
    /// When a comparison with each peer last started.
    var lastStarted: [UInt64: Int64] = [:]
    /// Peers an operator asked to compare with (`kith repair`), ahead of the interval.
    var requested: Set<UInt64> = []
    /// Peers whose pulls found their cursor behind this node's truncated log: compared with
    /// first, whether or not they have caught up (they cannot, from the log).
    var resyncRequested: Set<UInt64> = []
    var lastRequest: UInt64 = 0
}

extension ClusterNode {
    /// Starts a comparison with the peer compared least recently, if one is due: one at a time,
    /// and only once each side has read the other's log — during a backlog, either way, the
    /// trees differ by what the log is bringing anyway, and comparing would ship it twice.
    func compareTreesIfDue(now: Int64) throws {
        if let exchange = antiEntropy.exchange {
            guard now - exchange.sentAt >= settings.antiEntropyTimeout else { return }
            antiEntropy.exchange = nil
            counters.antiEntropyAbandoned += 1
        }
        if let behind = try dataPeers.first(where: { try antiEntropy.resyncRequested.contains($0.id) && acceptsData(from: $0.id) }) {
            antiEntropy.resyncRequested.remove(behind.id)
            // What the comparison brings the peer is this node's log through its last durable
            // entry at least (never past its last entry): later entries may be undone by a
            // crash, so the peer reads them from the log once they are on disk.
            try compareTrees(with: behind, now: now, resyncThrough: try store.durableLogSequence())
            return
        }
        // Never with a quarantined peer (its document states are not taken until it has cleared),
        // nor while this node clears.
        let caughtUp = try dataPeers.filter { peer in
            try acceptsData(from: peer.id) && (peers[peer.id].map { $0.isCaughtUp && $0.hasReadOurLog } ?? false)
        }
        if let asked = caughtUp.filter({ antiEntropy.requested.contains($0.id) }).min(by: { $0.id < $1.id }) {
            antiEntropy.requested.remove(asked.id)
            try compareTrees(with: asked, now: now)
            return
        }
        guard settings.antiEntropyInterval > 0 else { return }
        let due = caughtUp.filter { peer in
            antiEntropy.lastStarted[peer.id].map { now - $0 >= settings.antiEntropyInterval } ?? true
        }
        guard let peer = due.min(by: { (antiEntropy.lastStarted[$0.id] ?? .min, $0.id) < (antiEntropy.lastStarted[$1.id] ?? .min, $1.id) }) else {
            return
        }
        try compareTrees(with: peer, now: now)
    }

    /// Starts a tree comparison with `peer` now (`kith repair`, or when due); returns its
    /// request number. A comparison already in flight is given up.
    @discardableResult
    public func compareTrees(with peer: Member, now: Int64) throws -> UInt64 {
        try compareTrees(with: peer, now: now, resyncThrough: nil)
    }

    @discardableResult private func compareTrees(with peer: Member, now: Int64, resyncThrough: UInt64?) throws -> UInt64 {
        antiEntropy.lastRequest += 1
        antiEntropy.lastStarted[peer.id] = now
        var exchange = AntiEntropyState.Exchange(peer: peer.id, address: peer.address, request: antiEntropy.lastRequest, sentAt: now)
        exchange.resyncThrough = resyncThrough
        if let held = peers[peer.id]?.versions {
            var behind: [UInt64: UInt64] = [:]
            for (site, state) in peers where membership.members[site]?.scoped == true { behind[site] = state.truncatedPast }
            exchange.siteLogs = SiteLogRecovery.logsToResume(held: held, behind: behind)
        }
        exchange.nodes = [DigestEntry(key: [], digest: try store.digest(of: []))]
        antiEntropy.exchange = exchange
        counters.antiEntropyStarted += 1
        try step(now: now)
        return exchange.request
    }

    /// Asks for a tree comparison with each of `peers` as soon as this node has caught up with
    /// its log (`kith repair`); they run one at a time.
    public func requestTreeComparisons(with peers: [UInt64]) {
        antiEntropy.requested.formUnion(peers)
    }

    /// Tree comparisons asked for and not yet finished (the one in flight included).
    public var pendingTreeComparisons: Int {
        antiEntropy.requested.count + (antiEntropy.exchange == nil ? 0 : 1)
    }

    /// When the last tree comparison with `peer` started (this node's clock), if ever.
    public func lastTreeComparison(with peer: UInt64) -> Int64? { antiEntropy.lastStarted[peer] }

    /// Whether a tree comparison is in flight (with `peer`, if given).
    public func isComparingTrees(with peer: UInt64? = nil) -> Bool {
        guard let exchange = antiEntropy.exchange else { return false }
        return peer.map { $0 == exchange.peer } ?? true
    }

    /// The responder's side: the children of every node whose digest differs here.
    func differingChildren(of nodes: [DigestEntry]) throws -> [DigestChildren] {
        var result: [DigestChildren] = []
        for node in nodes where try store.digest(of: node.key) != node.digest {
            result.append(DigestChildren(node: node.key, children: try store.digestChildren(of: node.key)))
        }
        return result
    }

    /// The comparing side: a peer's children of the nodes asked about. Children whose digests
    /// differ (or that only one side has) are asked about next, or, under a bucket, swapped.
    func received(_ children: [DigestChildren], request: UInt64, from sender: UInt64, now: Int64) throws {
        guard var exchange = antiEntropy.exchange, exchange.request == request, exchange.peer == sender else { return }
        for node in children {
            let differing = Self.differing(mine: try store.digestChildren(of: node.node), theirs: node.children)
            if !DigestTreeShape.isBucket(node.node) {
                for key in differing { exchange.nodes.append(DigestEntry(key: key, digest: try store.digest(of: key))) }
            } else {
                exchange.keys += differing
            }
        }
        antiEntropy.exchange = exchange
        try step(now: now)
    }

    /// Document states from a peer: joined here; if the peer wants states back (it is comparing
    /// with this node), they are sent; if they answer this node's comparison, it goes on.
    func received(_ states: [DocumentState], wanted: [[UInt8]], request: UInt64, from sender: UInt64, address: String, now: Int64) throws {
        counters.documentsReceived += states.count
        guard !states.isEmpty else { return try continueComparison(wanted: wanted, request: request, from: sender, address: address, now: now) }
        let store = self.store
        try write({ ReplicatedWrite(changed: try store.join(states)) }) { [self] written in
            counters.documentsRepaired += written.changed
            try continueComparison(wanted: wanted, request: request, from: sender, address: address, now: now)
        }
    }

    /// After the states a peer sent are joined: the states it wants are sent back, or this
    /// node's own comparison goes on.
    private func continueComparison(wanted: [[UInt8]], request: UInt64, from sender: UInt64, address: String, now: Int64) throws {
        if !wanted.isEmpty {
            let (states, _) = try statesWithinBudget(for: wanted)
            counters.documentsSent += states.count
            send(replyAddress(sender, address), .documents(request: request, states: states, wanted: []))
        } else if let exchange = antiEntropy.exchange, exchange.request == request, exchange.peer == sender {
            try step(now: now)
        }
    }

    /// Sends the comparison's next message: document states first (the tree walk's result),
    /// then the next tree nodes; with neither left, the comparison is done. A resync walks the
    /// whole tree first, then swaps states with the erased keys ahead of the rest.
    private func step(now: Int64) throws {
        guard var exchange = antiEntropy.exchange else { return }
        exchange.sentAt = now
        let walkFirst = exchange.resyncThrough != nil && !exchange.nodes.isEmpty
        if exchange.resyncThrough != nil, exchange.nodes.isEmpty, !exchange.keysOrdered {
            let erased = try store.erased(among: exchange.keys)
            exchange.keys = exchange.keys.filter { erased.contains($0) } + exchange.keys.filter { !erased.contains($0) }
            exchange.keysOrdered = true
        }
        if !exchange.keys.isEmpty && !walkFirst {
            let batch = Array(exchange.keys.prefix(PeerMessage.maximumNodesPerRequest))
            let tooLarge = counters.documentsTooLarge
            let (states, sentKeys) = try statesWithinBudget(for: batch)
            exchange.skipped += counters.documentsTooLarge - tooLarge
            exchange.keys.removeFirst(sentKeys)
            antiEntropy.exchange = exchange
            counters.documentsSent += states.count
            send(exchange.address, .documents(request: exchange.request, states: states, wanted: Array(batch.prefix(sentKeys))))
        } else if !exchange.nodes.isEmpty {
            let batch = Array(exchange.nodes.prefix(min(settings.digestNodesPerRequest, PeerMessage.maximumNodesPerRequest)))
            exchange.nodes.removeFirst(batch.count)
            antiEntropy.exchange = exchange
            send(exchange.address, .digestRequest(request: exchange.request, nodes: batch))
        } else {
            antiEntropy.exchange = nil
            counters.antiEntropyCompleted += 1
            if let through = exchange.resyncThrough, exchange.skipped == 0 { resynced(exchange.peer, through: through) }
            if exchange.skipped == 0 {
                for (site, position) in exchange.siteLogs.sorted(by: { $0.key < $1.key }) { try resumeSiteLog(site, at: position) }
            }
        }
    }

    /// This node's states of the first of `keys` that fit the byte budget (always at least one
    /// key's worth), and how many keys that covers. A single state too large for any message
    /// is skipped and counted: the change log still carries its changes.
    private func statesWithinBudget(for keys: [[UInt8]]) throws -> (states: [DocumentState], keys: Int) {
        var states: [DocumentState] = []
        var bytes = 0
        var covered = 0
        for key in keys {
            let found = try store.documentStates(for: [key])
            var writer = BinaryWriter(capacity: 256)
            for state in found { state.encode(to: &writer) }
            if writer.bytes.count > Self.largestDocument {
                counters.documentsTooLarge += 1
                covered += 1
                continue
            }
            if bytes + writer.bytes.count > settings.documentBudget && covered > 0 { break }
            bytes += writer.bytes.count
            states += found
            covered += 1
        }
        return (states, covered)
    }

    /// Frames carry at most 8 MiB; a documents message leaves room for the rest of it.
    static let largestDocument = 6 << 20

    /// The keys whose digests differ between two sorted child lists (present on one side only included).
    static func differing(mine: [DigestEntry], theirs: [DigestEntry]) -> [[UInt8]] {
        var digests: [[UInt8]: (Digest128?, Digest128?)] = [:]
        for entry in mine { digests[entry.key, default: (nil, nil)].0 = entry.digest }
        for entry in theirs { digests[entry.key, default: (nil, nil)].1 = entry.digest }
        return digests.filter { $0.value.0 != $0.value.1 }.map(\.key).sorted { $0.lexicographicallyPrecedes($1) }
    }
}
