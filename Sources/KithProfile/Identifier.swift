import KithCRDT

/// A kind of identifier: one of the built-in kinds, or a kind an operator names in the
/// configuration (`loyalty_card`).
///
/// Keys and encodings begin with the kind's code: 1 to 6 for the built-in kinds, in their
/// default priority order; 7 for every custom kind, whose name is then written before the value
/// (`loyalty_card:1234`). Data names its kind, so a node that has not configured a kind still
/// stores, replicates and shows its identifiers as they are, and no two nodes can read one code
/// as two kinds.
public struct IdentifierKind: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The byte that begins the kind's keys and encodings.
    public let code: UInt8
    /// A custom kind's name; empty for the built-in kinds.
    private let customName: String

    private init(code: UInt8) {
        self.code = code
        customName = ""
    }

    public static let userId = IdentifierKind(code: 1)
    public static let email = IdentifierKind(code: 2)
    public static let phone = IdentifierKind(code: 3)
    public static let deviceId = IdentifierKind(code: 4)
    public static let anonymousId = IdentifierKind(code: 5)
    /// A group (an account, a household) of a `group` call: a document of its own, never linked
    /// to a person (`SegmentMessageParser.groupDelta`).
    public static let groupId = IdentifierKind(code: 6)
    /// The code of every custom kind.
    public static let customCode: UInt8 = 7

    /// The built-in kinds, in their default priority order.
    public static let builtIn: [IdentifierKind] = [.userId, .email, .phone, .deviceId, .anonymousId, .groupId]
    /// The built-in kinds that identify people: every one but `groupId`.
    public static let people: [IdentifierKind] = builtIn.filter { $0 != .groupId }

    private static let builtInNames = ["", "user_id", "email", "phone", "device_id", "anonymous_id", "group_id"]
    /// The longest name a custom kind may have.
    public static let maximumNameBytes = 32

    /// A custom kind: `name` is 1 to 32 of `a-z`, `0-9` and `_`, starting with a letter, and not
    /// a built-in kind's name.
    public init?(custom name: String) {
        guard Self.isCustomName(name.utf8) else { return nil }
        code = Self.customCode
        customName = name
    }

    /// The built-in kind named `name`, or the custom kind of that name.
    public init?(name: String) {
        if let index = Self.builtInNames.firstIndex(of: name), index > 0 {
            self.init(code: UInt8(index))
        } else {
            self.init(custom: name)
        }
    }

    /// The built-in kind of `code` (nil for the custom code and unknown codes).
    init?(builtInCode code: UInt8) {
        guard code >= 1, code < Self.customCode else { return nil }
        self.init(code: code)
    }

    static func isCustomName(_ name: some Collection<UInt8>) -> Bool {
        guard let first = name.first, first >= 0x61, first <= 0x7A, name.count <= maximumNameBytes else { return false }
        for byte in name where !((byte >= 0x61 && byte <= 0x7A) || (byte >= 0x30 && byte <= 0x39) || byte == 0x5F) { return false }
        return !builtInNames.contains { $0.utf8.elementsEqual(name) }
    }

    public var isCustom: Bool { code == Self.customCode }

    public var name: String { isCustom ? customName : Self.builtInNames[Int(code)] }

    private static let builtInFieldNames = builtInNames.map { "identifiers." + $0 }

    /// `identifiers.<name>`, the policy's field for this kind's values (built once for the
    /// built-in kinds: every read decides it).
    public var fieldName: String { isCustom ? "identifiers." + customName : Self.builtInFieldNames[Int(code)] }

    public var description: String { name }

    /// Custom kinds order by `name:`, so that identifiers order as their keys do (a name that
    /// begins another sorts after it when the longer one goes on with a digit, as `:` does).
    public static func < (a: IdentifierKind, b: IdentifierKind) -> Bool {
        if a.code != b.code { return a.code < b.code }
        guard a.isCustom else { return false }
        return Array(a.customName.utf8 + [0x3A]).lexicographicallyPrecedes(b.customName.utf8 + [0x3A])
    }

    public static func == (a: IdentifierKind, b: IdentifierKind) -> Bool { a.code == b.code && a.customName == b.customName }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(code)
        if isCustom { hasher.combine(customName) }
    }

    /// `"name":`, as a JSON member key (built-in kinds).
    var jsonKey: StaticString {
        switch code {
        case 1: #""user_id":"#
        case 2: #""email":"#
        case 3: #""phone":"#
        case 4: #""device_id":"#
        case 5: #""anonymous_id":"#
        default: #""group_id":"#
        }
    }

    /// `name:`, how a built-in kind's identifier's description begins.
    var descriptionPrefix: StaticString {
        switch code {
        case 1: "user_id:"
        case 2: "email:"
        case 3: "phone:"
        case 4: "device_id:"
        case 5: "anonymous_id:"
        default: "group_id:"
        }
    }
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

    /// Nil when the value is empty, too long or contains control characters. A custom kind's
    /// values are kept as given (`IdentifierSources.identifier(_:_:)` brings them to the kind's
    /// configured form first) and share the 255 bytes with the kind's name and a colon.
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
        guard !normalized.isEmpty, normalized.utf8.count <= Self.maximumValueBytes(of: kind),
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

    /// The most bytes a value of `kind` may have: 255, less a custom kind's `name:`.
    public static func maximumValueBytes(of kind: IdentifierKind) -> Int {
        kind.isCustom ? maximumValueBytes - kind.name.utf8.count - 1 : maximumValueBytes
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
        guard let first = bytes.first, let last = bytes.last, bytes.count <= maximumValueBytes(of: kind) else { return false }
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

    /// Whether a kind's code and the bytes after it (valid UTF-8) are an identifier exactly as
    /// `storedValue` writes it: for a custom kind, a valid name, a colon, and a value.
    package static func isStoredForm(code: UInt8, utf8 bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        if let kind = IdentifierKind(builtInCode: code) { return isStoredForm(utf8: bytes, kind: kind) }
        guard code == IdentifierKind.customCode, let colon = bytes.firstIndex(of: 0x3A),
            let kind = IdentifierKind(custom: String(decoding: UnsafeBufferPointer(rebasing: bytes[..<colon]), as: UTF8.self))
        else { return false }
        return isStoredForm(utf8: UnsafeBufferPointer(rebasing: bytes[(colon + 1)...]), kind: kind)
    }

    /// Parses `kind:value`; a name that is not a built-in kind's is a custom kind's.
    public init?(parsing text: String) {
        guard let (name, value) = text.splitAtFirstColon(), let kind = IdentifierKind(name: name) else { return nil }
        self.init(kind: kind, value: value)
    }

    public var description: String { "\(kind.name):\(value)" }

    public static func < (a: Identifier, b: Identifier) -> Bool {
        a.kind != b.kind ? a.kind < b.kind : a.value < b.value
    }

    /// What follows the kind's code in keys and encodings: the value, after `name:` for a
    /// custom kind.
    public var storedValue: String { kind.isCustom ? description : value }

    /// The identifier a kind's code and `storedValue` give, if they give one.
    init?(code: UInt8, storedValue: String) {
        if let kind = IdentifierKind(builtInCode: code) {
            self.init(kind: kind, value: storedValue)
        } else if code == IdentifierKind.customCode, let (name, value) = storedValue.splitAtFirstColon(), let kind = IdentifierKind(custom: name) {
            self.init(kind: kind, value: value)
        } else {
            return nil
        }
    }

    /// The storage key: one kind byte, then `storedValue`'s UTF-8 (at most 256 bytes).
    public var key: [UInt8] { [kind.code] + Array(storedValue.utf8) }

    public init?(key: some Collection<UInt8>) {
        guard let first = key.first, let stored = String(validating: key.dropFirst(), as: UTF8.self) else { return nil }
        self.init(code: first, storedValue: stored)
    }
}

extension Identifier: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        writer.write(byte: kind.code)
        writer.write(string: storedValue)
    }

    public init(from reader: inout BinaryReader) throws {
        let offset = reader.offset
        guard let identifier = Identifier(code: try reader.readByte(), storedValue: try reader.readString()), identifier.value.utf8.count > 0
        else { throw BinaryDecodingError(.invalidValue, offset: offset, "identifier") }
        self = identifier
    }
}

extension Sequence<Identifier> {
    /// The kinds these identifiers are of, each once: the built-in ones in their order, then the
    /// custom ones as they first appear (in order, for a profile's members, which are sorted;
    /// `EncodedProfileView` renders them the same way without sorting).
    public var kinds: [IdentifierKind] {
        var custom: [IdentifierKind] = []
        var present: UInt8 = 0
        for identifier in self {
            present |= 1 << identifier.kind.code
            if identifier.kind.isCustom, !custom.contains(identifier.kind) { custom.append(identifier.kind) }
        }
        return IdentifierKind.builtIn.filter { present & (1 << $0.code) != 0 } + custom
    }
}

extension String {
    /// The text before and after the first colon, found as a byte: a colon followed by a
    /// combining mark is one `Character`, which a search by character would pass over.
    package func splitAtFirstColon() -> (String, String)? {
        guard let colon = utf8.firstIndex(of: UInt8(ascii: ":")) else { return nil }
        return (String(decoding: utf8[..<colon], as: UTF8.self), String(decoding: utf8[utf8.index(after: colon)...], as: UTF8.self))
    }

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
