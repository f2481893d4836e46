import KithCrypto
import KithProfile

/// Where a page of a bulk export (or another walk over every profile) ends: the canonical
/// identifier of its last profile, sealed (AES-256-GCM, libcrypto) under a key every node of the
/// cluster derives from the shared secret, so that the cursor names no customer to whoever holds
/// it, works on any node, and survives restarts. A cursor that does not open is refused.
public struct ExportCursor: Sendable {
    let key: [UInt8]
    private static let associatedData = Array("kith export cursor v1".utf8)

    /// The key from the cluster's secret (HMAC-SHA256 of a label under it).
    public init(secret: [UInt8]) { key = Crypto.hmacSHA256(key: secret, message: Array("kith export cursor key v1".utf8)) }

    /// A token for the walk to go on after `identifier`.
    func token(after identifier: Identifier) throws -> String {
        Crypto.hex(try AESGCM.seal(identifier.key, key: key, associatedData: Self.associatedData))
    }

    /// The identifier a token of ours names, or nil for anything else.
    func identifier(from token: String) -> Identifier? {
        guard let sealed = Crypto.bytes(hex: token), let key = try? AESGCM.open(sealed, key: key, associatedData: Self.associatedData)
        else { return nil }  // not a token of ours: refused as such
        return Identifier(key: key)
    }
}
