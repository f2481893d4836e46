import KithCRDT
import KithCrypto

/// The `Kith-Session` token (docs/consistency.md): a version vector over origins — the changes a
/// client's writes made and its reads saw — as `1.` followed by the hex of its binary encoding.
/// Tokens compose by taking, per origin, the higher sequence.
enum SessionToken {
    static let header = "Kith-Session"
    static let prefix = "1."

    static func text(_ versions: VersionVector) -> String { TokenText.text(versions, prefix: prefix) }

    /// The token's version vector, or nil for a token this version did not make.
    static func parse(_ text: String) -> VersionVector? { TokenText.parse(text, prefix: prefix) }
}

/// Tokens the API hands out as text: a prefix naming the kind and version, then the hex of the
/// value's binary encoding. They name origins and sequences only, never a customer.
enum TokenText {
    static func text(_ value: some BinaryCodable, prefix: String) -> String {
        var writer = BinaryWriter(capacity: 24)
        value.encode(to: &writer)
        return prefix + Crypto.hex(writer.bytes)
    }

    /// The value, or nil for text this version did not make (the caller answers 400).
    static func parse<Value: BinaryCodable>(_ text: String, prefix: String) -> Value? {
        guard text.hasPrefix(prefix), text.utf8.count <= prefix.utf8.count + 2 * 4_096,
            let bytes = Crypto.bytes(hex: text.dropFirst(prefix.count))
        else { return nil }
        var reader = BinaryReader(bytes)
        // Not decodable, or bytes left over: not a token this version made.
        guard let value = try? Value(from: &reader), (try? reader.expectEnd()) != nil else { return nil }
        return value
    }
}
