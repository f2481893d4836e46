import KithCRDT
import KithCrypto
import KithProfile

/// Anti-entropy: a peer's document state joined into this store.
extension WriteContext {
    // MARK: Anti-entropy

    /// Joins another replica's state of one forget key into this one. The result is what
    /// holding both replicas' changes gives: ledger rows united (two copies of a message joined
    /// as `joinCopy` joins them), head fields joined and totals recounted from the ledger, links
    /// joined, the later erasure time kept and everything it dominates dropped — the same rules
    /// as applying messages, so replicas repaired this way are byte-identical to replicas that
    /// applied the changes. Nothing is logged: this repairs state, it is not a new change.
    /// Returns whether anything changed here.
    func join(_ state: DocumentState) throws -> Bool {
        var changed = false
        if let record = state.forgotten {
            let held = try forgetRecord(state.forgetKey)
            // One this node compacted (its last decision would drop it) is not taken back.
            if try held.map({ $0 < record }) ?? !engine.wouldHaveDropped(record, in: txn) {
                try forgetHashed([state.forgetKey], record)
                changed = true
            }
        }
        guard let identifier = state.identifier else { return changed }
        guard engine.hasher.forgetKeyBytes(for: identifier) == state.forgetKey else {
            throw DocumentStateRejected("the identifier does not hash to the document's forget key")
        }
        let cutoff = try forgottenTime(identifier)
        var incomingHead: SourceHead?
        var ledgerChanged = false
        // As when messages and unlinks apply: profiles are rebuilt around the identifier when its
        // own data changed, and around a link's ends when the link turned on or off or moved in
        // the rule order — a link that only gained a removal builds no profile for its ends.
        var starts: [Identifier] = []
        var edges: [(peer: Identifier, summary: EdgeSummary)] = []
        for row in state.rows {
            switch DocumentPart(rawValue: row.part) {
            case .head?: incomingHead = try decode(SourceHead.self, row.value, table: .documents)
            case .ledger?: if try joinLedgerRow(row, of: identifier, cutoff: cutoff) { ledgerChanged = true }
            case .edge?:
                guard let peer = Identifier(key: row.suffix), peer != identifier else {
                    throw DocumentStateRejected("a link to an invalid identifier")
                }
                edges.append((peer, try decode(EdgeSummary.self, row.value, table: .documents)))
            default: throw DocumentStateRejected("a record of part \(row.part) does not travel")
            }
        }
        // Links after the ledger rows: a link to an erased identifier is rebuilt from the rows
        // that assert it, and this state's rows must be among them (rows sort after links, so
        // joining in row order rebuilt such a link without the assertions that came with it).
        for (peer, summary) in edges {
            let (edgeChanged, structural) = try joinEdge(identifier, peer, summary)
            if edgeChanged { changed = true }
            if structural { starts += [identifier, peer] }
        }
        // A changed ledger row changes the view's newest events even when the head stays the same.
        if try joinHead(incomingHead, of: identifier, cutoff: cutoff, recount: ledgerChanged) || ledgerChanged { starts.append(identifier) }
        if !starts.isEmpty { try recompute(around: Array(Set(starts)).sorted()) }
        return changed || !starts.isEmpty
    }

    /// Joins one ledger row; returns whether the ledger changed.
    private func joinLedgerRow(_ row: DocumentState.Row, of identifier: Identifier, cutoff: Int64?) throws -> Bool {
        guard !row.suffix.isEmpty, row.suffix.count <= 200, !row.suffix.contains(0), String(validating: row.suffix, as: UTF8.self) != nil else {
            throw DocumentStateRejected("an invalid messageId")
        }
        var incoming = try decode(LedgerRow.self, row.value, table: .documents)
        if let cutoff {
            if incoming.entry.time <= cutoff { return false }
            if let trimmed = incoming.forgettingCopies(where: { $0 <= cutoff }) { incoming = trimmed }
        }
        var links: [Identifier] = []
        for peer in incoming.links where try !isForgotten(peer, at: incoming.entry.time) { links.append(peer) }
        incoming.links = links
        // A link record left with no link carries nothing (the sender will drop it too).
        if incoming.isEmptyLinkRecord { return false }
        let key = documentKey(identifier.key, .ledger, row.suffix)
        let existing = try txn.get(.documents, key).map { try decode(LedgerRow.self, $0, table: .documents) }
        let joined = existing.map { $0.joined(with: incoming) } ?? incoming
        guard joined != existing else { return false }
        try txn.put(.documents, key, ProfileFormat.encode(joined), mode: .upsert)
        return true
    }

    /// Joins one link summary under both ends; a link to an erased identifier is rebuilt from
    /// the ledger rows that assert it, as an erasure rebuilds it. Returns whether it changed.
    private func joinEdge(_ identifier: Identifier, _ peer: Identifier, _ summary: EdgeSummary) throws -> (changed: Bool, structural: Bool) {
        let forward = documentKey(identifier.key, .edge, peer.key)
        func stored() throws -> EdgeSummary? { try txn.get(.documents, forward).map { try decode(EdgeSummary.self, $0, table: .documents) } }
        let before = try stored()
        _ = try updateEdge(identifier, peer) { $0.join(summary) }
        if try forgottenTime(identifier) != nil || forgottenTime(peer) != nil { try rebuildEdge(LinkEdge(identifier, peer)!) }
        let after = try stored()
        let (old, new) = (before ?? EdgeSummary(), after ?? EdgeSummary())
        // An end first seen in a link assertion gets its profile, as `apply` registers it.
        let unregistered = try new.lastAdd != nil && (canonicalKey(identifier.key) == nil || canonicalKey(peer.key) == nil)
        return (after != before, unregistered || new.isActive != old.isActive || (new.isActive && new.firstAdd != old.firstAdd))
    }

    /// Joins the head's CRDT fields (what the erasure dominates dropped) and recounts its totals
    /// when the ledger changed. Returns whether the head changed.
    private func joinHead(_ incoming: SourceHead?, of identifier: Identifier, cutoff: Int64?, recount recounting: Bool) throws -> Bool {
        guard incoming != nil || recounting else { return false }
        let old = try source(identifier.key)
        var head = old ?? SourceHead()
        if var incoming {
            if let cutoff { incoming.dropFields(upTo: cutoff) }
            head.mergeFields(incoming, historyLimit: 0)
        }
        try recount(&head, of: identifier)
        let joined = head.isEmpty ? nil : head
        guard joined != old else { return false }
        if let joined { setSource(identifier.key, joined) } else { deleteSource(identifier.key) }
        return true
    }
}
