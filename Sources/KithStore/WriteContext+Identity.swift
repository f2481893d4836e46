import KithCRDT
import KithCrypto
import KithProfile

/// Identity: links added and removed, and the people (profiles) recomputed around them.
extension WriteContext {
    // MARK: Unmerge

    func removeLink(_ a: Identifier, _ b: Identifier, stamp: LWWStamp) throws {
        guard let edge = LinkEdge(a, b) else { return }
        try removeLink(edge, stamp: stamp, origin: nil)
    }

    func removeLink(_ edge: LinkEdge, stamp: LWWStamp, origin: ChangeOrigin?) throws {
        // A removal dated at or before an endpoint's erasure is dominated by it (and its key would name the erased).
        if try isForgotten(edge.low, at: stamp.time) || isForgotten(edge.high, at: stamp.time) { return }
        if try updateEdge(edge.low, edge.high, { $0.remove(stamp) }) { try recompute(around: [edge.low, edge.high]) }
        try log(.unlink(edge, stamp), origin: origin)
    }

    // MARK: Identity

    /// Whether `identifier` is new here (its profile must be built). No hash → identifier index is
    /// kept: a node that receives an erasure as forget keys (replication) hashes its own index keys
    /// instead, which is rare work, where keeping the index cost a random page write per new identifier.
    func register(_ identifier: Identifier) throws -> Bool {
        try canonicalKey(identifier.key) == nil
    }

    /// Updates the link between `a` and `b` in both directions; returns whether the identity
    /// structure changed (the link turned on or off, or moved in the evaluation order).
    func updateEdge(_ a: Identifier, _ b: Identifier, _ change: (inout EdgeSummary) -> Void) throws -> Bool {
        let forward = documentKey(a.key, .edge, b.key)
        let old = try txn.get(.documents, forward).map { try decode(EdgeSummary.self, $0, table: .documents) } ?? EdgeSummary()
        var summary = old
        change(&summary)
        guard summary != old else { return false }
        let bytes = ProfileFormat.encode(summary)
        try txn.put(.documents, forward, bytes, mode: .upsert)
        try txn.put(.documents, documentKey(b.key, .edge, a.key), bytes, mode: .upsert)
        return summary.isActive != old.isActive || (summary.isActive && summary.firstAdd != old.firstAdd)
    }

    /// Rebuilds the people in the connected components around `starts`, their views and index.
    ///
    /// `absorbing` is the message being applied, when it is the only change to the ledgers that
    /// the stored views do not reflect yet (`apply`). Then a person's newest events come from the
    /// old views wherever a whole old profile went into it, with that message's event added,
    /// and only the ledgers of the other members are read; not those of `fresh` identifiers
    /// either (new with that message: its row is the only one they can hold). Callers that changed
    /// ledger rows in other ways (copies joined, erasures, repairs) pass nil, and every member's
    /// ledger is read.
    /// Returns the identifiers of the components.
    @discardableResult
    func recompute(around starts: [Identifier], absorbing delta: ProfileDelta? = nil, fresh: Set<Identifier> = []) throws -> Set<Identifier> {
        var nodes = Set(starts)
        var queue = starts
        var links: [LinkEdge: LWWStamp] = [:]
        while let node = queue.popLast() {
            let prefix = documentKey(node.key, .edge)
            try txn.scan(.documents, prefix: prefix) { key, value in
                let summary = try decode(EdgeSummary.self, value, table: .documents)
                guard summary.isActive, let peer = Identifier(key: RowKey(stored: key).suffix) else { return .next }
                guard let firstAdd = summary.firstAdd else {
                    preconditionFailure("the active link of \(pseudonym(node)) to \(pseudonym(peer)) was never added: \(summary)")
                }
                links[link(node, peer)] = firstAdd
                if nodes.insert(peer).inserted { queue.append(peer) }
                return .next
            }
        }
        var oldCanonicalOf: [Identifier: [UInt8]] = [:]
        for node in nodes { oldCanonicalOf[node] = try canonicalKey(node.key) }
        let oldCanonicals = Set(oldCanonicalOf.values)
        // Read before any view is rewritten: a person split in two keeps one old canonical key.
        var oldViews: [[UInt8]: ProfileView] = [:]
        if delta != nil, historyLimit > 0 {
            for canonical in oldCanonicals { if let view = try view(canonical) { oldViews[canonical] = view } }
        }
        let people = IdentityResolver(rules: engine.configuration.profile.rules).people(
            nodes: Array(nodes), links: links.map { (edge: $0.key, order: $0.value) })
        var newCanonicals: Set<[UInt8]> = []
        for person in people {
            let heads = try person.compactMap { try source($0.key) }
            let recent = try newestEvents(of: person, oldViews: oldViews, oldCanonicalOf: oldCanonicalOf, absorbing: delta, fresh: fresh)
            newCanonicals.insert(try storeProfile(of: person, heads: heads, recent: recent))
        }
        for stale in oldCanonicals.subtracting(newCanonicals) { deleteView(stale) }
        return nodes
    }

    /// Computes again, under the rules in force, the people of every component with a member
    /// in digest-tree buckets `buckets` (a store's profiles were built under other rules:
    /// `StoreEngine.reevaluateIdentity`). A component reaching into several batches is computed
    /// once in each: the result is the same.
    func reevaluateIdentity(buckets: Range<Int>) throws {
        var done: Set<Identifier> = []
        for identifier in try txn.identifiers(inBuckets: buckets, hasher: engine.hasher) where !done.contains(identifier) {
            // Only identifiers in a profile: one with rows but none (an erased identifier
            // that keeps a link's removal) is known to nobody and must stay so.
            guard try canonicalKey(identifier.key) != nil else { continue }
            done.formUnion(try recompute(around: [identifier]))
        }
    }

    /// Stores the profile of `person` (its view under its canonical key) and points every
    /// member's index entry at it. Returns the canonical key.
    func storeProfile(of person: [Identifier], heads: [SourceHead], recent: [EventRecord]) throws -> [UInt8] {
        var view = ProfileView.assemble(members: person, heads: heads, rules: engine.configuration.profile.rules, historyLimit: historyLimit)
        view.head.recent = recent
        let canonical = view.canonical.key
        setView(canonical, view)
        for member in person where try canonicalKey(member.key) != canonical { try setCanonical(member.key, canonical) }
        return canonical
    }

    /// The newest `historyLimit` events over all of `members`. An old view whose members all
    /// belong to `members` already holds the newest events of its members (the newest of a
    /// union are the newest of the parts' newest), so only the ledgers of members outside such
    /// views are read. Linear in those members' histories; only a row whose (time, messageId)
    /// can still make the cut is fully decoded. `absorbing`'s event is added, and the ledgers of
    /// `fresh` identifiers are not read (`recompute`).
    func newestEvents(
        of members: [Identifier], oldViews: [[UInt8]: ProfileView], oldCanonicalOf: [Identifier: [UInt8]], absorbing delta: ProfileDelta?,
        fresh: Set<Identifier>
    ) throws -> [EventRecord] {
        var newest = SourceHead()
        guard historyLimit > 0 else { return [] }
        let memberSet = Set(members)
        var covered = fresh
        for canonical in Set(members.compactMap { oldCanonicalOf[$0] }) {
            guard let old = oldViews[canonical], old.members.allSatisfy(memberSet.contains) else { continue }
            covered.formUnion(old.members)
            for event in old.head.recent { newest.insertRecent(event, limit: historyLimit) }
        }
        if let delta, memberSet.contains(delta.subject), delta.type.isEvent, let event = delta.event {
            newest.insertRecent(event, limit: historyLimit)
        }
        for member in members where !covered.contains(member) {
            let prefix = documentKey(member.key, .ledger)
            try txn.scan(.documents, prefix: prefix) { key, value in
                try decode(value, table: .documents) { bytes in
                    var reader = BinaryReader(bytes)
                    guard try reader.readByte() == ProfileFormat.version else {
                        throw BinaryDecodingError(.unsupportedVersion, offset: 0, "ledger row")
                    }
                    let entry = try LedgerEntry(from: &reader)
                    guard entry.type.isEvent else { return }
                    if newest.recent.count == historyLimit, let last = newest.recent.last {
                        let messageId = String(decoding: RowKey(stored: key).suffix, as: UTF8.self)
                        guard (entry.time, messageId) > (last.time, last.messageId) else { return }
                    }
                    guard try reader.readBool() else { return }
                    newest.insertRecent(try EventRecord(from: &reader), limit: historyLimit)
                }
                return .next
            }
        }
        return newest.recent
    }
}
