import KithJSON

/// Where messages carry identifiers besides `userId`, `anonymousId` and alias's `previousId`:
/// field paths and Segment's `context.externalIds`, each giving identifiers of one kind; the
/// region national phone numbers are read in; and the custom kinds, each with its value form.
///
/// A path is `traits.NAME` (an identify call's traits, `context.traits` under them),
/// `context.A.B…` (any call's context), or `properties.NAME` (a track call's properties). A value
/// found there that is not a usable identifier of its kind (blocked, an email without `@`, a
/// phone that is not a number) is not an identifier; the message is still accepted.
public struct IdentifierSources: Sendable, Equatable {
    public struct Source: Sendable, Equatable {
        /// Where a path starts.
        enum Root: Sendable, Equatable {
            case traits, context, properties
        }

        public var path: String
        public var kind: IdentifierKind
        let root: Root
        /// The objects to go through below the root, and the field holding the value.
        let objects: [String]
        let field: String

        public init?(path: String, kind: IdentifierKind) {
            let components = path.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            guard components.count >= 2, !components.contains(where: \.isEmpty) else { return nil }
            switch components[0] {
            case "traits": root = .traits
            case "context": root = .context
            case "properties": root = .properties
            default: return nil
            }
            self.path = path
            self.kind = kind
            objects = Array(components.dropFirst().dropLast())
            field = components[components.count - 1]
        }
    }

    public var sources: [Source]
    /// `context.externalIds[].type` → the kind its `id` is.
    public var externalIdTypes: [String: IdentifierKind]
    /// Where a phone number without `+` or `00` is read (nil: such numbers are not identifiers).
    public var phoneRegion: PhoneNumber.Region?
    /// The custom kinds configured, with the form their values are brought to.
    public var customKinds: [IdentifierKind: ValueForm]

    public init(
        sources: [Source], externalIdTypes: [String: IdentifierKind], phoneRegion: PhoneNumber.Region?,
        customKinds: [IdentifierKind: ValueForm] = [:]
    ) {
        self.sources = sources
        self.externalIdTypes = externalIdTypes
        self.phoneRegion = phoneRegion
        self.customKinds = customKinds
    }

    /// The kinds of people's identifiers: the built-in ones, then the custom ones in order.
    public var kinds: [IdentifierKind] { IdentifierKind.people + customKinds.keys.sorted() }

    /// Whether `kind` is one of `kinds` (asked on every read: no array built).
    public func knows(_ kind: IdentifierKind) -> Bool {
        kind.isCustom ? customKinds[kind] != nil : kind != .groupId
    }

    /// `text` as an identifier of `kind` in the kind's normal form: a national phone number read
    /// in `phoneRegion`, a custom kind's value in its form. Nil when it is no value of the kind
    /// (or the custom kind is not configured here). Messages and API paths alike come through it.
    public func identifier(_ kind: IdentifierKind, _ text: String) -> Identifier? {
        guard kind.isCustom else { return Identifier(kind: kind, value: text, phoneRegion: phoneRegion) }
        guard let form = customKinds[kind], let value = form.normalized(text) else { return nil }
        return Identifier(kind: kind, value: value)
    }

    /// With no configuration: email and phone from traits (an identify call's, and any call's
    /// `context.traits`), the device from `context.device.id`, and external ids whose type is a
    /// kind's name.
    public static let builtIn = IdentifierSources(
        sources: [
            Source(path: "traits.email", kind: .email)!, Source(path: "context.traits.email", kind: .email)!,
            Source(path: "traits.phone", kind: .phone)!, Source(path: "context.traits.phone", kind: .phone)!,
            Source(path: "context.device.id", kind: .deviceId)!,
        ],
        externalIdTypes: Dictionary(uniqueKeysWithValues: IdentifierKind.people.map { ($0.name, $0) }), phoneRegion: nil)

    /// These sources with `extra` after them, `externalIdTypes` over these (a custom kind is
    /// also the external id type of its name), and the custom kinds.
    public func adding(
        _ extra: [Source], externalIdTypes more: [String: IdentifierKind], phoneRegion region: PhoneNumber.Region?,
        customKinds: [IdentifierKind: ValueForm] = [:]
    ) -> Self {
        var sources = self
        sources.sources += extra.filter { !self.sources.contains($0) }
        for kind in customKinds.keys { sources.externalIdTypes[kind.name] = kind }
        sources.externalIdTypes.merge(more) { _, new in new }
        sources.phoneRegion = region
        sources.customKinds.merge(customKinds) { _, new in new }
        return sources
    }

    /// The string at `source`'s path in `message`, if there is one. `traits` are an identify
    /// call's merged traits; other calls have none (a group call's traits are the group's).
    /// The source is read where it lies (`pointee`), never copied: every message goes through
    /// every source, and a copy is a retain and a release of its path and its list of objects
    /// (a tenth of parsing, measured).
    static func value(at source: UnsafePointer<Source>, message: JSONObject, context: JSONObject, traits: JSONObject?) -> String? {
        var object: JSONObject?
        switch source.pointee.root {
        case .traits:
            guard let traits else { return nil }
            object = traits
        case .context: object = context
        case .properties: object = message["properties"]?.objectValue
        }
        for index in 0..<source.pointee.objects.count {
            guard let inner = object?[source.pointee.objects[index]]?.objectValue else { return nil }
            object = inner
        }
        switch object?[source.pointee.field] {
        case .string(let text)?: return text
        case .number(let number)?: return number.literal
        default: return nil
        }
    }
}

/// The one form a custom kind's values are compared, stored and replicated in: two writings of a
/// card number meet only if this brings them together.
public enum ValueForm: String, Sendable, CaseIterable {
    /// As sent.
    case exact
    /// Without whitespace at either end.
    case trimmed
    /// Trimmed and lower-cased (codes that ignore case).
    case lowercase
    /// Trimmed and upper-cased.
    case uppercase
    /// Digits only: spaces and `-./()` dropped (`1234 5678-90` is `1234567890`); a value with
    /// any other character is no value of the kind.
    case digits

    /// `text` in this form; nil when nothing is left or (`digits`) something other than a digit
    /// or a separator is there.
    public func normalized(_ text: String) -> String? {
        let value: String
        switch self {
        case .exact: value = text
        case .trimmed: value = text.trimmingWhitespace()
        case .lowercase: value = text.trimmingWhitespace().lowercased()
        case .uppercase: value = text.trimmingWhitespace().uppercased()
        case .digits:
            var digits: [UInt8] = []
            for byte in text.utf8 {
                switch byte {
                case 0x30...0x39: digits.append(byte)
                case 0x20, 0x09, 0x2D, 0x2E, 0x2F, 0x28, 0x29: continue
                default: return nil
                }
            }
            value = String(decoding: digits, as: UTF8.self)
        }
        return value.isEmpty ? nil : value
    }
}
