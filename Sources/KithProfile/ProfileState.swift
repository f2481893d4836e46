import KithCRDT

/// Computes the keyed hash under which an erased identifier is remembered, so that the forget
/// set never holds the identifier itself. The store uses HMAC-SHA256 under a node secret.
public protocol ForgetKeyHasher: Sendable {
    func forgetKey(for identifier: Identifier) -> String
}

/// An erasure as made: the person's identifiers, and its boundary — everything about them dated
/// at or before it is gone. The boundary is the time the erasure was accepted or, if later, the
/// newest time held about the person; every such time is at most the receipt of its message
/// (`MessageTimes`), so the boundary is never ahead of the clocks of the nodes that took the
/// data in (docs/crdt.md, "Which clock orders what").
public struct Erasure: Equatable, Sendable {
    public var members: [Identifier]
    public var boundary: Int64

    public init(members: [Identifier], boundary: Int64) {
        self.members = members
        self.boundary = boundary
    }
}

/// What applying one message did.
public enum ApplyOutcome: Equatable, Sendable {
    /// The message was new and its data is now part of the profile.
    case applied
    /// The message (by messageId) had already been absorbed: nothing changed.
    case duplicate
    /// The message's subject was erased after the message's event time: it was dropped.
    case forgotten
}

/// Every profile of a replica as one pure value: source documents by identifier, the link graph,
/// and the forget set. It is the reference model of what a store must hold (the store tests
/// compare against it) and the state of a simulated node.
///
/// `merge` joins two replicas. The source documents, the graph and the forget set are each
/// CRDTs; after a join, the forget set is applied to the rest (every part an erasure dominates
/// is dropped), which every replica does with the same rule, so an old copy of erased data can
/// never come back through a merge.
public struct ProfileState: Equatable, Sendable {
    public private(set) var configuration: ProfileConfiguration
    public private(set) var documents: [Identifier: SourceDocument] = [:]
    public private(set) var graph = IdentityGraph()
    /// Forget key → erasure time (Unix ms): data dated at or before it is gone for good.
    public private(set) var forgotten: [String: Int64] = [:]

    public init(configuration: ProfileConfiguration = ProfileConfiguration()) {
        self.configuration = configuration
    }

    /// The same documents, links and erasures under other identity rules: profiles are derived
    /// from them, so every view follows the new rules at once (what a store's re-evaluation
    /// must reach).
    public mutating func adopt(_ rules: IdentityRules) {
        configuration.rules = rules
    }

    public static func == (a: ProfileState, b: ProfileState) -> Bool {
        a.configuration == b.configuration && a.documents == b.documents && a.graph == b.graph && a.forgotten == b.forgotten
    }

    // MARK: - Operations

    @discardableResult
    public mutating func apply(_ delta: ProfileDelta, hasher: some ForgetKeyHasher) -> ApplyOutcome {
        if isForgotten(delta.subject, at: delta.times.eventTime, hasher) { return .forgotten }
        var document = documents[delta.subject] ?? SourceDocument()
        // A second copy is joined in too (see `SourceDocument.apply`), links included.
        let isNew = document.apply(delta, historyLimit: configuration.historyLimit)
        documents[delta.subject] = document
        assertLinks(of: delta, hasher)
        return isNew ? .applied : .duplicate
    }

    /// A message whose record had expired under the retention rules when it came: what it set
    /// and the links it asserted, as a store keeps them once its sweep has passed; it counts
    /// in no total and leaves no event (docs/privacy.md, "Retention").
    public mutating func applyExpired(_ delta: ProfileDelta, hasher: some ForgetKeyHasher) {
        if isForgotten(delta.subject, at: delta.times.eventTime, hasher) { return }
        var document = documents[delta.subject] ?? SourceDocument()
        document.absorbFields(of: delta, historyLimit: configuration.historyLimit)
        documents[delta.subject] = document.isEmpty ? nil : document
        assertLinks(of: delta, hasher)
    }

    /// The links `delta` asserted, each to a peer not erased as of its time.
    private mutating func assertLinks(of delta: ProfileDelta, _ hasher: some ForgetKeyHasher) {
        for peer in delta.links where !isForgotten(peer, at: delta.times.eventTime, hasher) {
            graph.merge(key: LinkEdge(delta.subject, peer)!, LinkState(adds: [delta.stamp: delta.channel]))
        }
    }

    /// Unmerge: removes the link between `a` and `b` as of `stamp` (normally a node's HLC time).
    /// A removal dated at or before an endpoint's erasure is dominated by it and dropped.
    public mutating func removeLink(_ a: Identifier, _ b: Identifier, stamp: LWWStamp, hasher: some ForgetKeyHasher) {
        guard let edge = LinkEdge(a, b), !isForgotten(a, at: stamp.time, hasher), !isForgotten(b, at: stamp.time, hasher) else { return }
        graph.merge(key: edge, LinkState(removedAt: stamp))
    }

    /// Erases the whole person `identifier` belongs to. The erasure time is `time` or, if later,
    /// the newest time of anything held about the person (every such time is at most the receipt of
    /// its message, `MessageTimes`), so that an erasure always covers everything known at the
    /// moment it is made. Returns the erased members.
    @discardableResult
    public mutating func erase(_ identifier: Identifier, at time: Int64, hasher: some ForgetKeyHasher) -> [Identifier] {
        let members = view(of: identifier)?.members ?? [identifier]
        let erasureTime = erasureTime(of: Set(members), requested: time)
        for member in members {
            let key = hasher.forgetKey(for: member)
            forgotten[key] = max(forgotten[key] ?? erasureTime, erasureTime)
        }
        applyForgetSet(hasher)
        return members
    }

    /// An erasure made elsewhere, as it travels: forget keys and the erasure time.
    public mutating func applyErasure(forgetKeys: [String], time: Int64, hasher: some ForgetKeyHasher) {
        for key in forgetKeys { forgotten[key] = max(forgotten[key] ?? time, time) }
        applyForgetSet(hasher)
    }

    private func erasureTime(of members: Set<Identifier>, requested: Int64) -> Int64 {
        var time = requested
        for member in members {
            if let document = documents[member] { time = max(time, document.head.lastSeen ?? time) }
        }
        for (edge, state) in graph.pairs where members.contains(edge.low) || members.contains(edge.high) {
            for stamp in Array(state.adds.keys) + [state.removedAt].compactMap({ $0 }) { time = max(time, stamp.time) }
        }
        return time
    }

    public mutating func merge(_ other: ProfileState, hasher: some ForgetKeyHasher) {
        precondition(configuration == other.configuration, "replicas must share one profile configuration")
        for (identifier, document) in other.documents {
            if var mine = documents[identifier] {
                mine.merge(document, historyLimit: configuration.historyLimit)
                documents[identifier] = mine
            } else {
                documents[identifier] = document
            }
        }
        graph.merge(other.graph)
        for (key, time) in other.forgotten { forgotten[key] = max(forgotten[key] ?? time, time) }
        applyForgetSet(hasher)
    }

    private func forgottenTime(_ identifier: Identifier, _ hasher: some ForgetKeyHasher) -> Int64? {
        forgotten.isEmpty ? nil : forgotten[hasher.forgetKey(for: identifier)]
    }

    private func isForgotten(_ identifier: Identifier, at time: Int64, _ hasher: some ForgetKeyHasher) -> Bool {
        forgottenTime(identifier, hasher).map { time <= $0 } ?? false
    }

    private mutating func applyForgetSet(_ hasher: some ForgetKeyHasher) {
        guard !forgotten.isEmpty else { return }
        for (identifier, var document) in documents {
            guard let time = forgottenTime(identifier, hasher) else { continue }
            document.forget(upTo: time)
            documents[identifier] = document.isEmpty ? nil : document
        }
        var kept = IdentityGraph()
        for edge in graph.sortedKeys {
            var state: LinkState? = graph[edge]
            for endpoint in [edge.low, edge.high] {
                if let time = forgottenTime(endpoint, hasher) { state = state?.forgetting(upTo: time) }
            }
            if let state { kept.merge(key: edge, state) }
        }
        graph = kept
    }

    // MARK: - Views

    /// Every identifier the state knows: document keys and the endpoints of links that were ever
    /// asserted (a removal that arrived before its link does not make an identifier known).
    public var identifiers: Set<Identifier> {
        var all = Set(documents.keys)
        for (edge, state) in graph.pairs where !state.adds.isEmpty {
            all.insert(edge.low)
            all.insert(edge.high)
        }
        return all
    }

    /// The profile `identifier` belongs to, or nil if the identifier is unknown.
    public func view(of identifier: Identifier) -> ProfileView? {
        guard identifiers.contains(identifier) else { return nil }
        let adjacency = activeAdjacency()
        let person = people(around: identifier, adjacency).first { $0.contains(identifier) }!
        return assemble(person)
    }

    /// Every profile, ordered by canonical identifier.
    public var views: [ProfileView] {
        let adjacency = activeAdjacency()
        var seen = Set<Identifier>()
        var result: [ProfileView] = []
        for identifier in identifiers.sorted() where !seen.contains(identifier) {
            for person in people(around: identifier, adjacency) {
                seen.formUnion(person)
                result.append(assemble(person))
            }
        }
        return result.sorted { $0.canonical < $1.canonical }
    }

    private func assemble(_ person: [Identifier]) -> ProfileView {
        ProfileView.assemble(
            members: person, heads: person.compactMap { documents[$0]?.head }, rules: configuration.rules,
            historyLimit: configuration.historyLimit)
    }

    private func activeAdjacency() -> [Identifier: [(LinkEdge, LWWStamp)]] {
        var adjacency: [Identifier: [(LinkEdge, LWWStamp)]] = [:]
        for (edge, state) in graph.pairs where state.isActive {
            let order = state.firstAdd!
            adjacency[edge.low, default: []].append((edge, order))
            adjacency[edge.high, default: []].append((edge, order))
        }
        return adjacency
    }

    /// The people within the connected component (by active links) around `start`.
    private func people(around start: Identifier, _ adjacency: [Identifier: [(LinkEdge, LWWStamp)]]) -> [[Identifier]] {
        var nodes: Set<Identifier> = [start]
        var queue = [start]
        var links: [LinkEdge: LWWStamp] = [:]
        while let node = queue.popLast() {
            for (edge, order) in adjacency[node] ?? [] {
                links[edge] = order
                let next = edge.other(than: node)
                if nodes.insert(next).inserted { queue.append(next) }
            }
        }
        return IdentityResolver(rules: configuration.rules).people(
            nodes: Array(nodes), links: links.map { (edge: $0.key, order: $0.value) })
    }
}
