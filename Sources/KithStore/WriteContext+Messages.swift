import KithCRDT
import KithCrypto
import KithProfile

/// Messages: a new one applied, a redelivered copy joined in.
extension WriteContext {
    // MARK: Messages

    func apply(_ delta: ProfileDelta) throws -> ApplyOutcome {
        try apply(delta, origin: nil)
    }

    /// Applies a message accepted here (`origin` nil) or replicated from `origin`, and logs it
    /// (unless it is applied ahead of its place, `logged` false). A replicated copy is logged
    /// even when this node already held it, so the peers that read only this node's log get it.
    /// `acceptedBy` is the node that took the message from its client: `origin`'s, else this one.
    func apply(_ delta: ProfileDelta, origin: ChangeOrigin?, logged: Bool = true, acceptedBy: UInt64? = nil) throws -> ApplyOutcome {
        let time = delta.times.eventTime
        if try isForgotten(delta.subject, at: time) { return .forgotten }
        let subjectKey = delta.subject.key
        let ledgerKey = documentKey(subjectKey, .ledger, delta.messageId.utf8)
        var links: [Identifier] = []
        for peer in delta.links where try !isForgotten(peer, at: time) { links.append(peer) }
        let acceptance = Acceptance(
            copyTime: time, origin: acceptedBy ?? origin?.node ?? engine.configuration.node, receivedAt: delta.times.receivedAt)
        let row = LedgerRow(
            entry: LedgerEntry(delta: delta), event: delta.event, links: links, consent: delta.consent, channel: delta.channel,
            acceptances: [acceptance])
        guard try txn.put(.documents, ledgerKey, ProfileFormat.encode(row), mode: .insertOnly) else {
            if try joinCopy(delta, row, at: ledgerKey) || origin != nil, logged { try log(.message(delta), origin: origin) }
            return .duplicate
        }

        // A source head keeps no history (limit 0): events live in ledger rows, and only views
        // hold the newest few, so heads stay small and rewriting them stays cheap.
        let head = try heads.modify(subjectKey, from: txn, initial: { SourceHead() }) { head in
            head.absorb(delta, historyLimit: 0)
            return head
        }!

        // Identifiers new here: their ledgers hold this message's row at most.
        var fresh: Set<Identifier> = try register(delta.subject) ? [delta.subject] : []
        var structureChanged = !fresh.isEmpty
        for peer in links {
            if try register(peer) {
                structureChanged = true
                fresh.insert(peer)
            }
            if try updateEdge(delta.subject, peer, { $0.add(delta.stamp) }) { structureChanged = true }
        }
        if links.isEmpty && fresh.contains(delta.subject) {
            try startProfile(delta, head: head)
        } else if structureChanged {
            // The peers too: a link whose removal arrived first registers its peer inactive,
            // out of reach of the subject's component, and the peer still needs its own profile.
            try recompute(around: [delta.subject] + links, absorbing: delta, fresh: fresh)
        } else {
            guard let canonical = try canonicalKey(subjectKey) else {
                preconditionFailure("\(pseudonym(delta.subject)) has a ledger but no index entry, and its message changed no structure")
            }
            try views.modify(canonical, from: txn) { $0.head.absorb(delta, historyLimit: historyLimit) }!
        }
        if logged { try log(.message(delta), origin: origin) }
        return .applied
    }

    /// The profile of a new identifier that its first message links to nothing: what `recompute`
    /// builds for it, without the reads that cannot find anything. An identifier gets its index
    /// entry whenever it gets a link or a ledger row (`recompute` registers every node it
    /// reaches), so a new one has no links, and no ledger row but this message's.
    private func startProfile(_ delta: ProfileDelta, head: SourceHead) throws {
        let person = [delta.subject]
        let recent = try newestEvents(of: person, oldViews: [:], oldCanonicalOf: [:], absorbing: delta, fresh: Set(person))
        _ = try storeProfile(of: person, heads: [head], recent: recent)
    }

    /// A second copy of a message already absorbed. An exact copy changes nothing. A differing
    /// one (the same message redelivered to two nodes has two receive times, so two corrected
    /// event times) is joined in as `SourceDocument.apply` joins it — the greater row kept, both
    /// copies' fields joined — so replicas agree whichever copy each saw first. Returns whether
    /// anything changed (then the copy is logged, so replicas further away see it too).
    ///
    /// A catch-up after a partition joins thousands of such copies, so a copy costs what it
    /// changes: only when it changes who is linked to whom, or may move a first-seen time, are
    /// the ledgers read again and the profiles around it rebuilt.
    private func joinCopy(_ delta: ProfileDelta, _ row: LedgerRow, at ledgerKey: [UInt8]) throws -> Bool {
        guard let stored = try txn.get(.documents, ledgerKey) else {
            preconditionFailure("the ledger row of a message of \(pseudonym(delta.subject)) refused an insert but is not there")
        }
        let existing = try decode(LedgerRow.self, stored, table: .documents)
        let joined = existing.joined(with: row)
        guard joined != existing else { return false }
        try txn.put(.documents, ledgerKey, ProfileFormat.encode(joined), mode: .upsert)
        var structureChanged = false
        for peer in row.links {
            if try updateEdge(delta.subject, peer, { $0.add(delta.stamp) }) { structureChanged = true }
        }
        var copy = SourceHead()
        copy.absorb(delta, historyLimit: 0)
        var head = try source(delta.subject.key) ?? SourceHead()
        head.mergeFields(copy, historyLimit: 0)
        if !structureChanged, try absorbCopy(copy, replacing: existing, with: joined, into: &head, of: delta.subject) {
            setSource(delta.subject.key, head)
            return true
        }
        try recount(&head, of: delta.subject)
        // A copy joined into a link record counts in nothing, and may have set nothing either.
        if head.isEmpty { deleteSource(delta.subject.key) } else { setSource(delta.subject.key, head) }
        try recompute(around: [delta.subject] + row.links)
        return true
    }

    /// What a joined copy changes in its subject's head (whose fields already hold the copy's)
    /// and in its profile, made without reading a ledger: the fields join the copy's, the totals
    /// count the joined row's entry instead of the old one, and the newest events hold the
    /// joined row's event. The result is what `recount` and `recompute` would build. Returns
    /// false, having changed nothing, when it cannot be had that way: a first-seen time may
    /// move, an event would leave a full list of newest events that only ledgers can refill, or
    /// a link record (counted in no total) is replaced or kept.
    private func absorbCopy(
        _ copy: SourceHead, replacing old: LedgerRow, with joined: LedgerRow, into head: inout SourceHead, of subject: Identifier
    ) throws -> Bool {
        guard joined.event != nil || old.event == nil, !old.isLinkRecord, !joined.isLinkRecord else { return false }
        guard let canonical = try canonicalKey(subject.key), var view = try view(canonical) else { return false }
        var newHead = head
        guard newHead.recount(replacing: old.entry, with: joined.entry), view.head.recount(replacing: old.entry, with: joined.entry) else {
            return false
        }
        view.head.mergeFields(copy, historyLimit: historyLimit)
        if let event = joined.event, joined.event != old.event {
            // The joined event orders at or after the old one (rows order by entry, then event,
            // the order of history), so it replaces the old one or joins the list newer than it.
            view.head.insertRecent(event, limit: historyLimit)
        }
        head = newHead
        setView(canonical, view)
        return true
    }

    /// Recomputes a head's totals from its identifier's ledger rows (link records count in none).
    func recount(_ head: inout SourceHead, of identifier: Identifier) throws {
        head.messageCount = 0
        head.firstSeen = nil
        head.lastSeen = nil
        head.aggregates = SortedDictionary()
        try txn.scan(.documents, prefix: documentKey(identifier.key, .ledger)) { _, value in
            let row = try decode(LedgerRow.self, value, table: .documents)
            if !row.isLinkRecord { head.count(row.entry) }
            return .next
        }
    }
}
