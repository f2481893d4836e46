import KithCRDT

/// The kinds of identifier Kith resolves people by, in default priority order: the canonical key
/// of a profile is its member of the highest-priority kind (smallest value within the kind).
public enum IdentifierKind: UInt8, CaseIterable, Comparable, Sendable {
    case userId = 1
    case email = 2
    case phone = 3
    case deviceId = 4
    case anonymousId = 5
    /// A group (an account, a household) of a `group` call: a document of its own, never linked
    /// to a person (`SegmentMessageParser.groupDelta`).
    case groupId = 6

    public var name: String {
        switch self {
        case .userId: "user_id"
        case .email: "email"
        case .phone: "phone"
        case .deviceId: "device_id"
        case .anonymousId: "anonymous_id"
        case .groupId: "group_id"
        }
    }

    /// `"name":`, as a JSON member key.
    var jsonKey: StaticString {
        switch self {
        case .userId: #""user_id":"#
        case .email: #""email":"#
        case .phone: #""phone":"#
        case .deviceId: #""device_id":"#
        case .anonymousId: #""anonymous_id":"#
        case .groupId: #""group_id":"#
        }
    }

    /// `name:`, how an identifier's description begins.
    var descriptionPrefix: StaticString {
        switch self {
        case .userId: "user_id:"
        case .email: "email:"
        case .phone: "phone:"
        case .deviceId: "device_id:"
        case .anonymousId: "anonymous_id:"
        case .groupId: "group_id:"
        }
    }

    public init?(name: String) {
        guard let kind = Self.allCases.first(where: { $0.name == name }) else { return nil }
        self = kind
    }

    public static func < (a: IdentifierKind, b: IdentifierKind) -> Bool { a.rawValue < b.rawValue }

    /// The kinds that identify people: every kind but `groupId`.
    public static let people: [IdentifierKind] = allCases.filter { $0 != .groupId }
}

/// A typed identifier of a person, written `kind:value` (`user_id:u-1`, `email:a@example.com`).
///
/// Values are at most 255 bytes of UTF-8 without control characters, so that an identifier (and
/// an identifier plus a messageId) always fits an LMDB key. Email values are trimmed and
/// lower-cased: `A@Example.com` and `a@example.com` are one inbox, one person. Phone values are
/// E.164 (`PhoneNumber`): `+44 20 7946 0000` is `+442079460000`; a national number is not a
/// phone identifier until a region makes it international (`PhoneNumber.normalized(_:region:)`).
public struct Identifier: Hashable, Comparable, Sendable, CustomStringConvertible {
    public static let maximumValueBytes = 255

    public let kind: IdentifierKind
    public let value: String

    /// Nil when the value is empty, too long or contains control characters.
    public init?(kind: IdentifierKind, value: String) {
        // Stored, replicated and most received values are already in normal form: checked on
        // their bytes, without the Unicode-aware trimming and lower-casing.
        if Self.isNormal(value, kind: kind) {
            self.kind = kind
            self.value = value
            return
        }
        let normalized: String
        switch kind {
        case .email: normalized = value.trimmingWhitespace().lowercased()
        case .phone:
            guard let phone = PhoneNumber.normalized(value) else { return nil }
            normalized = phone
        default: normalized = value
        }
        guard !normalized.isEmpty, normalized.utf8.count <= Self.maximumValueBytes,
            !normalized.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F })
        else { return nil }
        self.kind = kind
        self.value = normalized
    }

    /// `init(kind:value:)`, with a national phone number read in `phoneRegion` (the one place a
    /// region turns a value into a phone identifier: messages and API paths alike).
    public init?(kind: IdentifierKind, value: String, phoneRegion: PhoneNumber.Region?) {
        guard kind == .phone, let phoneRegion else {
            self.init(kind: kind, value: value)
            return
        }
        guard let phone = PhoneNumber.normalized(value, region: phoneRegion) else { return nil }
        self.init(kind: .phone, value: phone)
    }

    /// Whether `value` is valid for `kind` and already what normalizing it gives: not empty, not
    /// too long, no control character (in UTF-8 those are single bytes), and for an email plain
    /// ASCII with no upper-case letter and no whitespace at either end. A value this rejects
    /// may still be valid; the full check decides.
    private static func isNormal(_ value: String, kind: IdentifierKind) -> Bool {
        // Native strings are contiguous UTF-8: one tight loop. Others take the full check.
        value.utf8.withContiguousStorageIfAvailable { isNormal(utf8: $0, kind: kind) } ?? false
    }

    static func isNormal(utf8 bytes: UnsafeBufferPointer<UInt8>, kind: IdentifierKind) -> Bool {
        guard let first = bytes.first, let last = bytes.last, bytes.count <= maximumValueBytes else { return false }
        if kind == .phone { return PhoneNumber.isNormal(utf8: bytes) }
        if kind == .email {
            guard first > 0x20, last > 0x20 else { return false }
            for byte in bytes where byte < 0x20 || byte >= 0x7F || (byte >= 0x41 && byte <= 0x5A) { return false }
            return true
        }
        for byte in bytes where byte < 0x20 || byte == 0x7F { return false }
        return true
    }

    /// Whether `utf8` (valid UTF-8) is a value of `kind` exactly as `init(kind:value:)` keeps it.
    package static func isStoredForm(utf8 bytes: UnsafeBufferPointer<UInt8>, kind: IdentifierKind) -> Bool {
        if isNormal(utf8: bytes, kind: kind) { return true }
        guard let identifier = Identifier(kind: kind, value: String(decoding: bytes, as: UTF8.self)) else { return false }
        return identifier.value.utf8.elementsEqual(bytes)
    }

    /// Parses `kind:value`.
    public init?(parsing text: String) {
        guard let colon = text.firstIndex(of: ":"), let kind = IdentifierKind(name: String(text[..<colon])) else {
            return nil
        }
        self.init(kind: kind, value: String(text[text.index(after: colon)...]))
    }

    public var description: String { "\(kind.name):\(value)" }

    public static func < (a: Identifier, b: Identifier) -> Bool {
        a.kind != b.kind ? a.kind < b.kind : a.value < b.value
    }

    /// The storage key: one kind byte, then the value's UTF-8 (at most 256 bytes).
    public var key: [UInt8] { [kind.rawValue] + Array(value.utf8) }

    public init?(key: some Collection<UInt8>) {
        guard let first = key.first, let kind = IdentifierKind(rawValue: first),
            let value = String(validating: key.dropFirst(), as: UTF8.self)
        else { return nil }
        self.init(kind: kind, value: value)
    }
}

extension Identifier: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        writer.write(byte: kind.rawValue)
        writer.write(string: value)
    }

    public init(from reader: inout BinaryReader) throws {
        let offset = reader.offset
        guard let kind = IdentifierKind(rawValue: try reader.readByte()),
            let identifier = Identifier(kind: kind, value: try reader.readString()), identifier.value.utf8.count > 0
        else { throw BinaryDecodingError(.invalidValue, offset: offset, "identifier") }
        self = identifier
    }
}

extension String {
    func trimmingWhitespace() -> String {
        // Most values start and end with a visible ASCII character: nothing to trim, and no
        // Unicode property lookups to find that out.
        if let first = utf8.first, let last = utf8.last, (0x21..<0x7F).contains(first), (0x21..<0x7F).contains(last) { return self }
        var sub = Substring(self)
        while let c = sub.first, c.isWhitespace { sub.removeFirst() }
        while let c = sub.last, c.isWhitespace { sub.removeLast() }
        return String(sub)
    }
}
