import KithCRDT
import KithProfile

extension DocumentState {
    /// This state as a member that may hold only part of it receives it (`DocumentProjection`):
    /// nothing of an identifier it may not hold but the forget record (erasures go everywhere),
    /// no link to such an identifier, and heads, ledger entries and events as the projection
    /// leaves them. A row's consent decisions, channel and acceptances go as they are. Nil when
    /// nothing at all goes. Rows are decoded and encoded again, so a damaged row is refused here
    /// (`BinaryDecodingError`) rather than sent.
    package func projected(by projection: DocumentProjection) throws -> DocumentState? {
        guard let identifier, projection.holds(identifier) else {
            return forgotten.map { DocumentState(forgetKey: forgetKey, identifier: nil, forgotten: $0, rows: []) }
        }
        var kept: [Row] = []
        for row in rows {
            switch DocumentPart(rawValue: row.part) {
            case .head?:
                let head = try ProfileFormat.decode(SourceHead.self, from: row.value)
                kept.append(Row(part: row.part, suffix: row.suffix, value: ProfileFormat.encode(projection.head(head))))
            case .ledger?:
                var ledger = try ProfileFormat.decode(LedgerRow.self, from: row.value)
                ledger.entry = projection.entry(ledger.entry)
                ledger.event = ledger.event.flatMap(projection.event)
                ledger.links.removeAll { !projection.holds($0) }
                // A link record to no one the member holds says nothing to it.
                if ledger.isEmptyLinkRecord { continue }
                kept.append(Row(part: row.part, suffix: row.suffix, value: ProfileFormat.encode(ledger)))
            case .edge?:
                guard let peer = Identifier(key: row.suffix) else { throw DocumentStateRejected("a link to an invalid identifier") }
                if projection.holds(peer) { kept.append(row) }
            default:
                throw DocumentStateRejected("a record of part \(row.part) does not travel")
            }
        }
        return DocumentState(forgetKey: forgetKey, identifier: identifier, forgotten: forgotten, rows: kept)
    }
}
