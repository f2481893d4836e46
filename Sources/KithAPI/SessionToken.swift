import KithCRDT
import KithCrypto

/// The `Kith-Session` token (docs/consistency.md): a version vector over origins — the changes a
/// client's writes made and its reads saw — as `1.` followed by the hex of its binary encoding.
/// Tokens compose by taking, per origin, the higher sequence.
enum SessionToken {
    static let header = "Kith-Session"
    static let prefix = "1."

    static func text(_ versions: VersionVector) -> String {
        var writer = BinaryWriter(capacity: 16)
        versions.encode(to: &writer)
        return prefix + Crypto.hex(writer.bytes)
    }

    /// The token's version vector, or nil for a token this version did not make.
    static func parse(_ text: String) -> VersionVector? {
        guard text.hasPrefix(prefix), text.utf8.count <= 2 + 2 * 4_096, let bytes = Crypto.bytes(hex: text.dropFirst(prefix.count)) else {
            return nil
        }
        var reader = BinaryReader(bytes)
        // Not decodable: not a token this version made (the caller answers 400).
        guard let versions = try? VersionVector(from: &reader), (try? reader.expectEnd()) != nil else { return nil }
        return versions
    }
}
