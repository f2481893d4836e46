import KithCRDT
import KithCrypto
import KithProfile

/// Erasure: the cascade that forgets a person here, and erasures that arrive from peers.
extension WriteContext {
    // MARK: Erasure

    /// Erases the person `identifier` belongs to. The erasure time is the requested time or, if
    /// later, the newest time of anything held about them, so erasure always covers all of it.
    func erase(_ identifier: Identifier, requestedAt requested: Int64) throws -> Erasure {
        guard let canonical = try canonicalKey(identifier.key), let view = try self.view(canonical) else {
            // Nothing held here — but another replica, or an edge site that is offline, may hold
            // the customer: the erasure is remembered and replicated all the same, so their data
            // is dropped wherever it is and whenever it arrives.
            // Rows may still mention it (a neighbour's link): the same path as an erasure that
            // arrives from a peer, so every replica ends up the same.
            let forgetKeys = [engine.hasher.forgetKeyBytes(for: identifier)]
            let origin = try log(.erasure(forgetKeys: forgetKeys, time: requested), origin: nil)
            try forgetHashed(forgetKeys, ForgetRecord(time: requested, by: origin))
            return Erasure(members: [identifier], boundary: requested)
        }
        let members = view.members
        var time = max(requested, view.head.lastSeen ?? requested)
        for member in members {
            try txn.scan(.documents, prefix: documentKey(member.key, .edge)) { _, value in
                time = max(time, try decode(EdgeSummary.self, value, table: .documents).newestTime ?? time)
                return .next
            }
        }
        let forgetKeys = members.map { engine.hasher.forgetKeyBytes(for: $0) }
        // Logged first for its sequence, which the forget records name; the erasure itself
        // survives the purge of the log that forgetting runs.
        let origin = try log(.erasure(forgetKeys: forgetKeys, time: time), origin: nil)
        try remember(forgetKeys, ForgetRecord(time: time, by: origin))
        try forget(members)
        return Erasure(members: members, boundary: time)
    }

    /// An erasure made on another node: it names forget keys only, so the identifiers held here
    /// are found by hashing each (linear in the identifiers held; erasures are rare).
    func applyErasure(forgetKeys: [[UInt8]], time: Int64, origin: ChangeOrigin) throws {
        try forgetHashed(forgetKeys, ForgetRecord(time: time, by: origin))
        try log(.erasure(forgetKeys: forgetKeys, time: time), origin: origin)
    }

    /// The effect of an erasure that arrived as forget keys: the forget set, and the data here it dominates.
    func forgetHashed(_ forgetKeys: [[UInt8]], _ record: ForgetRecord) throws {
        try remember(forgetKeys, record)
        try forget(try identifiers(hashingTo: Set(forgetKeys)))
    }

    /// The identifiers held here whose forget keys are in `wanted`.
    private func identifiers(hashingTo wanted: Set<[UInt8]>) throws -> [Identifier] {
        try txn.identifiers(withForgetKeys: wanted, hasher: engine.hasher)
    }

    /// Adds forget-set records (each keeps the later erasure, `ForgetRecord.joined`).
    private func remember(_ forgetKeys: [[UInt8]], _ record: ForgetRecord) throws {
        for key in forgetKeys {
            let previous = try forgetRecord(key)
            let joined = previous.map { $0.joined(with: record) } ?? record
            if joined != previous { try txn.put(.forget, key, encodeForgetRecord(joined), mode: .upsert) }
        }
        anyForgotten = true
    }

    /// Applies the forget set to `members` as `ProfileState` does: everything dated at or before
    /// a member's erasure time goes — ledger rows, head fields, link assertions, and every
    /// mention of the member in its neighbours' rows and in the change log. What is newer
    /// survives (a replica may hold data the erasing node had not seen), and the people around
    /// the members are rebuilt.
    private func forget(_ members: [Identifier]) throws {
        guard !members.isEmpty else { return }
        var times: [Identifier: Int64] = [:]
        for member in members { times[member] = try erasureTime(of: member) }
        // The links' floor is the members' own erasure times, which their forget records give.
        try drop(members, ErasureCutoffs(times: times), linkFloor: .min)
    }

    /// What an erasure and a purge both do to `members`: their ledger rows and head fields as
    /// `cutoffs` decide, every mention of them in their neighbours' ledger rows, their links
    /// rebuilt from what survives (no add or removal at or before `linkFloor`, nor before an
    /// end's erasure), their entries in the change log, the people around them rebuilt, and
    /// their data keys retired.
    private func drop(_ members: [Identifier], _ cutoffs: ErasureCutoffs, linkFloor: Int64) throws {
        var touched: Set<Identifier> = Set(members)
        var edges: Set<LinkEdge> = []
        for member in members {
            try forgetLedger(of: member, cutoffs)
            for peer in try linkedPeers(of: member) {
                edges.insert(link(member, peer))
                touched.insert(peer)
            }
        }
        for member in members {
            for edge in edges where edge.low == member || edge.high == member {
                try stripMentions(of: member, fromLedgerOf: edge.other(than: member), cutoffs)
            }
        }
        for edge in edges.sorted() { try rebuildEdge(edge, floor: linkFloor) }
        try purgeChanges(cutoffs)
        try rebuildProfiles(around: touched.sorted())
        // Heads and views still cached here are written back at `finish`, under the new keys.
        try txn.retireKeys(of: members)
    }

    /// Drops every document of `members` and every mention of them in their neighbours' (the
    /// links, and the links of ledger rows) and rebuilds the profiles around them, retiring their
    /// data keys, as an erasure does: a scoped site purging customers that left its scope (docs/replication.md,
    /// "Scope"). Unlike an erasure it leaves no forget record — the customers live on
    /// elsewhere — and unlike a clearing it takes exactly `members`, not their link closures
    /// (after an unmerge, the component that stays is still joined to the one that leaves by the
    /// removed link). This node's log entries about them go too, as their retired keys would
    /// leave them unreadable in a sealed store anyway: call it only once the node's peers hold
    /// what it accepted about `members` (a site purges out-of-scope writes once the core has
    /// acknowledged them durably).
    func purge(_ members: [Identifier]) throws {
        let purged = Set(members).sorted()
        // Everything of theirs is dated before the limit: every row, and every add and removal
        // of a link with a purged end, goes.
        try drop(
            purged, ErasureCutoffs(times: Dictionary(uniqueKeysWithValues: purged.map { ($0, MessageTimes.limit) })), linkFloor: MessageTimes.limit)
    }

    /// The identifiers `member` has a link row to, active or not.
    private func linkedPeers(of member: Identifier) throws -> [Identifier] {
        var peers: [Identifier] = []
        try txn.scan(.documents, prefix: documentKey(member.key, .edge)) { key, _ in
            if let peer = Identifier(key: RowKey(stored: key).suffix) { peers.append(peer) }
            return .next
        }
        return peers
    }

    /// Drops everything `identifiers` and every identifier linked to them, transitively, hold
    /// dated at or before `floor`: ledger rows, head fields and link assertions, as an erasure of
    /// each at that time would, but leaving no forget record and keeping every data key (nobody
    /// was erased), and rebuilds their profiles. What a member quarantined after a forget
    /// compaction does to all it holds, a bounded step at a time, before its peers take anything
    /// from it again (docs/replication.md, "Compacting forget entries"); what was not erased comes
    /// back from them by comparison. Linked identifiers go together so that every step leaves a
    /// consistent store: a ledger row asserting a link whose rows a step dropped (its other end
    /// in a bucket not cleared yet) would reach a peer comparing meanwhile and stay there for
    /// good, its link lost (the simulation found it).
    func dropEverything(of identifiers: [Identifier], datedThrough floor: Int64) throws {
        let cutoffs = ErasureCutoffs(times: [:], floor: floor)
        var group = Set(identifiers)
        var frontier = identifiers
        var edges: Set<LinkEdge> = []
        while let member = frontier.popLast() {
            for peer in try linkedPeers(of: member) {
                edges.insert(link(member, peer))
                if group.insert(peer).inserted { frontier.append(peer) }
            }
        }
        var around = group
        for member in group.sorted() {
            if let canonical = try canonicalKey(member.key), let view = try view(canonical) { around.formUnion(view.members) }
            try forgetLedger(of: member, cutoffs)
        }
        for edge in edges.sorted() { try rebuildEdge(edge, floor: floor) }
        try rebuildProfiles(around: around.sorted())
    }

    /// Drops every logged change dated at or before `floor` (the first step of a clearing).
    func purgeChanges(datedThrough floor: Int64) throws {
        try purgeChanges(ErasureCutoffs(times: [:], floor: floor))
    }

    /// Drops or trims the member's ledger rows as its cutoff decides, and recomputes its head.
    private func forgetLedger(of member: Identifier, _ cutoffs: ErasureCutoffs) throws {
        guard let time = cutoffs.cutoff(of: member) else { preconditionFailure("\(pseudonym(member)) is forgotten without an erasure time") }
        var dropped: [[UInt8]] = []
        var trimmed: [([UInt8], LedgerRow)] = []
        try txn.scan(.documents, prefix: documentKey(member.key, .ledger)) { key, value in
            switch cutoffs.fate(ofOwn: try decode(LedgerRow.self, value, table: .documents), of: member) {
            case .keep: break
            case .drop: dropped.append(key)
            case .rewrite(let row): trimmed.append((key, row))
            }
            return .next
        }
        try txn.write(.documents, dropped.map { ($0, nil) } + trimmed.map { ($0.0, ProfileFormat.encode($0.1)) })
        guard var head = try source(member.key) else { return }
        head.dropFields(upTo: time)
        try recount(&head, of: member)
        if head.isEmpty { deleteSource(member.key) } else { setSource(member.key, head) }
    }

    /// Removes `member` from the links listed in `neighbour`'s ledger rows its cutoff dominates
    /// (a link record left with no link goes).
    private func stripMentions(of member: Identifier, fromLedgerOf neighbour: Identifier, _ cutoffs: ErasureCutoffs) throws {
        var rewrites: [([UInt8], [UInt8]?)] = []
        try txn.scan(.documents, prefix: documentKey(neighbour.key, .ledger)) { key, value in
            if let row = cutoffs.stripped(try decode(LedgerRow.self, value, table: .documents), of: member) {
                rewrites.append((key, row.isEmptyLinkRecord ? nil : ProfileFormat.encode(row)))
            }
            return .next
        }
        try txn.write(.documents, rewrites)
    }

    /// Rebuilds the profiles around `identifiers`, whose own data just shrank (an erasure, an
    /// expiry): one no longer known leaves its profile and keeps nothing but its links' rows (a
    /// removal newer than an erasure is kept, as in the model); the people of the others are
    /// computed again; views no longer under a canonical key go.
    func rebuildProfiles(around identifiers: [Identifier]) throws {
        var oldCanonicals: Set<[UInt8]> = []
        var known: [Identifier] = []
        for identifier in identifiers {
            if let canonical = try canonicalKey(identifier.key) { oldCanonicals.insert(canonical) }
            if try isKnown(identifier) {
                known.append(identifier)
            } else {
                deleteSource(identifier.key)
                try setCanonical(identifier.key, nil)
                try txn.deletePrefix(.documents, documentKey(identifier.key, .ledger))
            }
        }
        if !known.isEmpty { try recompute(around: known) }
        for canonical in oldCanonicals where try canonicalKey(canonical) != canonical { deleteView(canonical) }
    }

    /// Recomputes a link from the ledger rows that assert it, keeping only what is newer than
    /// both endpoints' erasures (the summary alone cannot say which adds an erasure dominates).
    func rebuildEdge(_ edge: LinkEdge, floor: Int64 = .min) throws {
        let cutoff = max(try forgottenTime(edge.low) ?? .min, try forgottenTime(edge.high) ?? .min, floor)
        var adds: [LWWStamp] = []
        for (subject, peer) in [(edge.low, edge.high), (edge.high, edge.low)] {
            try txn.scan(.documents, prefix: documentKey(subject.key, .ledger)) { key, value in
                let row = try decode(LedgerRow.self, value, table: .documents)
                guard row.links.contains(peer) else { return .next }
                let messageId = String(decoding: RowKey(stored: key).suffix, as: UTF8.self)
                adds += row.copyTimes.map { LWWStamp(time: $0, tiebreak: messageId) }
                return .next
            }
        }
        let forward = documentKey(edge.low.key, .edge, edge.high.key), backward = documentKey(edge.high.key, .edge, edge.low.key)
        let old = try txn.get(.documents, forward).map { try decode(EdgeSummary.self, $0, table: .documents) }
        let summary = EdgeSummary.rebuilt(adds: adds, removal: old?.removedAt, cutoff: cutoff)
        if summary == EdgeSummary() {
            try txn.delete(.documents, forward)
            try txn.delete(.documents, backward)
        } else {
            let bytes = ProfileFormat.encode(summary)
            try txn.put(.documents, forward, bytes, mode: .upsert)
            try txn.put(.documents, backward, bytes, mode: .upsert)
        }
    }

    /// Whether anything of `identifier` is held: its own data, or a link assertion (as in
    /// `ProfileState.identifiers`, a removal alone does not make an identifier known).
    func isKnown(_ identifier: Identifier) throws -> Bool {
        if try source(identifier.key) != nil { return true }
        var asserted = false
        try txn.scan(.documents, prefix: documentKey(identifier.key, .edge)) { _, value in
            asserted = try decode(EdgeSummary.self, value, table: .documents).lastAdd != nil
            return asserted ? .stop : .next
        }
        return asserted
    }

    /// Rewrites logged changes (committed or pending) so none names an erased member with data
    /// the erasure dominates: such messages and unlinks are dropped, and a message about someone
    /// else loses its link to the member. (Linear in the log; crypto-shredding will replace this,
    /// see docs/storage.md.)
    private func purgeChanges(_ cutoffs: ErasureCutoffs) throws {
        let purged = cutoffs.purged
        var rewrites: [([UInt8], [ChangeEntry])] = []
        try txn.scan(.changes, prefix: []) { key, value in
            let entries = try decode(value, table: .changes, ChangeRecord.decode)
            let kept = entries.compactMap(purged)
            if kept != entries { rewrites.append((key, kept)) }
            return .next
        }
        for (key, kept) in rewrites {
            // Keys stay: a record keeps the key of its last original entry, which still sorts right.
            if kept.isEmpty { try txn.delete(.changes, key) } else { try txn.put(.changes, key, ChangeRecord.encode(kept), mode: .upsert) }
        }
        // The copies that travel ahead of a backlog too.
        var aheadRewrites: [([UInt8], ChangeEntry?)] = []
        try txn.scan(.ahead, prefix: []) { key, value in
            let entry = try decode(ChangeEntry.self, value, table: .ahead)
            let kept = purged(entry)
            if kept != entry { aheadRewrites.append((key, kept)) }
            return .next
        }
        for (key, kept) in aheadRewrites {
            if let kept { try txn.put(.ahead, key, ProfileFormat.encode(kept), mode: .upsert) } else { try txn.delete(.ahead, key) }
        }
        pendingChanges = pendingChanges.compactMap(purged)
    }
}
