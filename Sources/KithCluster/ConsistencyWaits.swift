import KithCRDT

/// What a caller waits for from the cluster before it is answered (docs/consistency.md).
public enum ConsistencyWait: Sendable, Equatable {
    /// A write at `?w=`: this node's own changes through `ownThrough` held by as many replicas
    /// as `concern` asks (this node included).
    case replicas(ownThrough: UInt64, concern: WriteConcern)
    /// A read presenting a session token: this node holds everything the token covers.
    case session(VersionVector)
    /// A read at `?consistency=`: as many replicas as `concern` asks (this node included) have
    /// each answered a pull sent for this read, so this node holds every write they had
    /// acknowledged before it began.
    case replicaReads(WriteConcern)
}

extension ConsistencyWait {
    /// This wait given up, at a node `origin` that counts `replicas` replicas: held by that node
    /// alone, or every other origin of the token still missing.
    public func unmet(replicas: Int, origin: UInt64) -> ConsistencyOutcome {
        switch self {
        case .replicas(_, let concern), .replicaReads(let concern): .replicas(count: 1, required: concern.required(replicas: replicas), met: false)
        case .session(let token): .session(missing: token.sequences.keys.filter { $0 != origin })
        }
    }
}

/// How a wait ended, decided by the node; its shell only answers the caller accordingly.
public enum ConsistencyOutcome: Sendable, Equatable {
    /// Replicas that hold the write, or that answered the read's pulls, against those required.
    case replicas(count: Int, required: Int, met: Bool)
    /// The origins of the token whose changes this node still lacks (none: satisfied).
    case session(missing: [UInt64])

    public var isMet: Bool {
        switch self {
        case .replicas(_, _, let met): met
        case .session(let missing): missing.isEmpty
        }
    }
}

/// The waits a node has in progress, by the number its caller gave each.
struct PendingWaits {
    struct Pending {
        var wait: ConsistencyWait
        var deadline: Int64
        /// For a replica read: per replica asked, the pull request that asked it.
        var requests: [UInt64: UInt64] = [:]
    }

    var byNumber: [UInt64: Pending] = [:]
}

extension ClusterNode {
    /// Starts waiting for `wait` on behalf of the caller numbered `number` (unique among its
    /// waits in progress), until `deadline` on the node's clock. Returns the outcome at once when
    /// nothing needs waiting for; otherwise the node does what the wait needs (pushes its own
    /// changes, pulls from its peers) and `settleWaits` returns the outcome later, by the
    /// deadline at the latest.
    public func startWait(_ number: UInt64, _ wait: ConsistencyWait, deadline: Int64, now: Int64) throws -> ConsistencyOutcome? {
        precondition(waits.byNumber[number] == nil, "wait \(number) is already in progress: \(waits.byNumber[number]!)")
        let pending = PendingWaits.Pending(wait: wait, deadline: deadline)
        if let outcome = try outcome(of: pending, now: now, settling: false) { return outcome }
        waits.byNumber[number] = pending
        switch wait {
        case .replicas: try pushOwnChanges()
        case .session: for peer in logPeers { try pull(from: peer, now: now) }
        case .replicaReads: try askReplicas(&waits.byNumber[number]!, now: now)
        }
        return nil
    }

    /// The waits decided now: met, or out of time. Each is returned once, then forgotten.
    /// A wait whose state cannot be read ends unmet, with the error.
    public func settleWaits(now: Int64) -> [(number: UInt64, outcome: ConsistencyOutcome, error: (any Error)?)] {
        var settled: [(number: UInt64, outcome: ConsistencyOutcome, error: (any Error)?)] = []
        for number in waits.byNumber.keys.sorted() {
            var pending = waits.byNumber[number]!
            do {
                if case .replicaReads = pending.wait { try askReplicas(&pending, now: now) }
                if let outcome = try outcome(of: pending, now: now, settling: true) {
                    settled.append((number, outcome, nil))
                    waits.byNumber[number] = nil
                } else {
                    waits.byNumber[number] = pending
                }
            } catch {
                settled.append((number, unmet(pending.wait), error))
                waits.byNumber[number] = nil
            }
        }
        return settled
    }

    /// Ends every wait in progress, unmet (the node is stopping).
    public func endWaits() -> [(number: UInt64, outcome: ConsistencyOutcome)] {
        defer { waits.byNumber = [:] }
        return waits.byNumber.keys.sorted().map { ($0, unmet(waits.byNumber[$0]!.wait)) }
    }

    /// Waits in progress.
    public var waitsInProgress: Int { waits.byNumber.count }

    /// Whether the wait numbered `number` is in progress.
    public func isWaiting(_ number: UInt64) -> Bool { waits.byNumber[number] != nil }

    /// `wait` given up here.
    public func unmet(_ wait: ConsistencyWait) -> ConsistencyOutcome {
        wait.unmet(replicas: replicaCount(configured: settings.replicas), origin: id)
    }

    /// The outcome if the wait is decided: met, or (when settling) past its deadline.
    private func outcome(of pending: PendingWaits.Pending, now: Int64, settling: Bool) throws -> ConsistencyOutcome? {
        let expired = settling && now >= pending.deadline
        switch pending.wait {
        case .replicas(let ownThrough, let concern):
            let held = replicasHolding(ownChange: ownThrough)
            let required = concern.required(replicas: replicaCount(configured: settings.replicas))
            return held >= required || expired ? .replicas(count: held, required: required, met: held >= required) : nil
        case .session(let token):
            let missing = try SessionCoverage.missing(token, in: store, origin: id)
            return missing.isEmpty || expired ? .session(missing: missing) : nil
        case .replicaReads(let concern):
            // A replica counts while it is a member and has answered the pull sent for this read.
            let answered =
                1 + pending.requests.filter { membership.members[$0.key] != nil && (peers[$0.key]?.caughtUpThrough ?? 0) >= $0.value }.count
            let required = concern.required(replicas: replicaCount(configured: settings.replicas))
            return answered >= required || expired ? .replicas(count: answered, required: required, met: answered >= required) : nil
        }
    }

    /// Sends a pull to every reachable replica a read has not asked yet (one that became
    /// reachable since the read began is asked too).
    private func askReplicas(_ pending: inout PendingWaits.Pending, now: Int64) throws {
        let replicas = replicaIDs
        for peer in logPeers where replicas.contains(peer.id) && pending.requests[peer.id] == nil {
            pending.requests[peer.id] = try pull(from: peer, now: now)
        }
    }

}
