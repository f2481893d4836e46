import KithCRDT
import KithCrypto

/// A document a scoped site holds, as it tells the core in a site sync (`PeerMessage.siteSync`):
/// its identifier and the digest of its state, which the core compares with the digest of the
/// state it would send (docs/replication.md, "Scope"). The identifier is the site's own: the
/// core holds it already, so naming it discloses nothing.
public struct HeldDocument: Equatable, Sendable {
    public var identifier: Identifier
    public var digest: Digest128

    public init(identifier: Identifier, digest: Digest128) {
        self.identifier = identifier
        self.digest = digest
    }
}

extension HeldDocument {
    /// The digest of a whole report (documents in identifier order): a site whose report has
    /// not changed since a core last took it sends only this (`PeerMessage.siteSync`).
    public static func summary(of documents: [HeldDocument]) -> Digest128 {
        var writer = BinaryWriter(capacity: documents.count * 40 + 8)
        writer.write(sequence: documents.sorted { $0.identifier < $1.identifier }) { writer, document in document.encode(to: &writer) }
        return Digest128(bytes: Crypto.sha256(writer.bytes).prefix(Digest128.byteCount))
    }
}

/// One page of a site's report (`PeerMessage.siteSync`): the documents it holds with
/// identifiers after `after` (nil: from the first), in identifier order, through the last of them
/// — or through the end when `last`. A report too large for one frame goes in pages, one a sync.
public struct ReportPage: Equatable, Sendable {
    public var after: Identifier?
    public var documents: [HeldDocument]
    public var last: Bool

    public init(after: Identifier?, documents: [HeldDocument], last: Bool) {
        precondition(last || !documents.isEmpty, "a page that is not the last holds a document")
        self.after = after
        self.documents = documents
        self.last = last
    }

    /// Whether this page covers `identifier`'s place in the report.
    public func covers(_ identifier: Identifier) -> Bool {
        if let after, identifier <= after { return false }
        if !last, let end = documents.last?.identifier, identifier > end { return false }
        return true
    }

    /// `report` (in identifier order) with what this page covers replaced by the page.
    public func applied(to report: [HeldDocument]) -> [HeldDocument] {
        (report.filter { !covers($0.identifier) } + documents).sorted { $0.identifier < $1.identifier }
    }
}

extension ReportPage: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        writer.write(bool: after != nil)
        after?.encode(to: &writer)
        writer.write(sequence: documents) { writer, document in document.encode(to: &writer) }
        writer.write(bool: last)
    }

    public init(from reader: inout BinaryReader) throws {
        let after = try reader.readBool() ? try Identifier(from: &reader) : nil
        let documents = try reader.readSequence(minimumItemSize: 2 + Digest128.byteCount) { reader in try HeldDocument(from: &reader) }
        let offset = reader.offset
        let last = try reader.readBool()
        guard last || !documents.isEmpty else { throw BinaryDecodingError(.invalidValue, offset: offset, "an empty page that is not the last") }
        guard zip(documents, documents.dropFirst()).allSatisfy({ $0.identifier < $1.identifier }),
            after.map({ after in documents.first.map { $0.identifier > after } ?? true }) ?? true
        else { throw BinaryDecodingError(.invalidValue, offset: offset, "a page's documents out of order") }
        self.init(after: after, documents: documents, last: last)
    }
}

extension HeldDocument: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        identifier.encode(to: &writer)
        writer.write(raw: digest.bytes)
    }

    public init(from reader: inout BinaryReader) throws {
        identifier = try Identifier(from: &reader)
        digest = Digest128(bytes: try reader.readRaw(Digest128.byteCount))
    }
}

extension DocumentState {
    /// The digest a site and the core compare this state by: the first 16 bytes of the SHA-256
    /// of its encoding (rows in key order, forget record included). A cryptographic hash,
    /// because a collision would leave a site holding a field it must not, silently.
    public var contentDigest: Digest128 {
        Digest128(bytes: Crypto.sha256(encoded()).prefix(Digest128.byteCount))
    }
}
