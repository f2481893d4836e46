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
