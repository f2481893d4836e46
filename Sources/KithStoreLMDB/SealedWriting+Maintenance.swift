import KithCRDT
import KithStore

/// What the retention sweep asks of sealed tables besides changing rows: storing identifier
/// rows deflated, and writing rows again in key order so that they fill their pages. Neither
/// changes a row the engine reads.
extension SealedWriting {
    /// Stores `owner`'s identifier row deflated (`IdentifierRow.deflated`) when ingest left it
    /// plain and that is shorter, sealed again under the key that sealed it. A row this
    /// transaction changed (a sweep that dropped some of its data) is stored deflated when it is
    /// sealed at commit. Records do not change.
    func deflateIdentifierRow(of owner: [UInt8]) throws -> Bool {
        let pseudonym = session.pseudonym(owner)
        if session.changedIdentifierRow(pseudonym) {
            guard let row = try reading.identifierRow(pseudonym), IdentifierRow.deflated(row.encoded()) != nil else { return false }
            session.deflateAtCommit(pseudonym)
            return true
        }
        let rowKey = pseudonym + [Sealing.ownerPart]
        guard let stored = try base.get(.documents, rowKey), let plain = try session.openIdentifierRow(stored, rowKey: rowKey),
            let deflated = IdentifierRow.deflated(plain)
        else { return false }
        let id = try SealingSession.identifierRowKeyID(stored).id
        guard let key = session.sealing.keys.key(for: id) else { return false }
        try base.put(.documents, rowKey, try session.sealIdentifierRow(deflated, id, key, rowKey: rowKey), mode: .upsert)
        return true
    }

    /// Deletes a run of rows and puts them back in key order: LMDB splits a page in the middle
    /// when a row goes inside it, so rows written in random key order (pseudonyms) leave pages
    /// about two-thirds full, and fewer still once the sweep has shrunk their values in place;
    /// rows put in ascending order into a gap fill each page before the next (a page split for
    /// a row at its end keeps all it can on the left). Values are the same bytes, sealed under
    /// the same keys (a box's associated data is its row's key).
    /// Pseudonyms are a forget key's first bytes, so a bucket's owners are one run of the table.
    func repack(from start: [UInt8], beforeBucket bucket: Int, atMost limit: Int) throws -> (rows: Int, next: [UInt8]?) {
        precondition(limit > 0 && (0...DigestTreeShape.bucketCount).contains(bucket), "repacking \(limit) rows before bucket \(bucket)")
        var end = bucket < DigestTreeShape.bucketCount ? DigestTreeShape.firstBytes(ofBucket: bucket) : nil
        if let bucketStart = end, !start.lexicographicallyPrecedes(bucketStart) { end = nil }
        var rows: [(key: [UInt8], value: [UInt8])] = []
        var next: [UInt8]?
        try base.scan(.documents, from: start) { key, value in
            guard rows.count < limit, end.map({ key.lexicographicallyPrecedes($0) }) ?? true else {
                next = key
                return .stop
            }
            rows.append((key, value))
            return .next
        }
        for row in rows { try base.delete(.documents, row.key) }
        for row in rows { try base.put(.documents, row.key, row.value, mode: .upsert) }
        return (rows.count, next)
    }

    func keepsLedgerTailWithIdentifierRow(of owner: [UInt8]) throws -> Bool {
        try reading.identifierRow(session.pseudonym(owner))?.ledgerTail != nil
    }
}
