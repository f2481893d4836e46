import KithJSON

/// Where messages carry identifiers besides `userId`, `anonymousId` and alias's `previousId`:
/// field paths and Segment's `context.externalIds`, each giving identifiers of one kind, and the
/// region national phone numbers are read in.
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

    public init(sources: [Source], externalIdTypes: [String: IdentifierKind], phoneRegion: PhoneNumber.Region?) {
        self.sources = sources
        self.externalIdTypes = externalIdTypes
        self.phoneRegion = phoneRegion
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

    /// The built-in sources with `extra` after them, and `externalIdTypes` over the built-in ones.
    public func adding(_ extra: [Source], externalIdTypes more: [String: IdentifierKind], phoneRegion region: PhoneNumber.Region?) -> Self {
        var sources = self
        sources.sources += extra.filter { !self.sources.contains($0) }
        sources.externalIdTypes.merge(more) { _, new in new }
        sources.phoneRegion = region
        return sources
    }

    /// The string at `source`'s path in `message`, if there is one. `traits` are an identify
    /// call's merged traits; other calls have none (a group call's traits are the group's).
    func value(at source: Source, message: JSONObject, context: JSONObject, traits: JSONObject?) -> String? {
        var object: JSONObject?
        switch source.root {
        case .traits: object = traits
        case .context: object = context
        case .properties: object = message["properties"]?.objectValue
        }
        for name in source.objects {
            guard let inner = object?[name]?.objectValue else { return nil }
            object = inner
        }
        switch object?[source.field] {
        case .string(let text)?: return text
        case .number(let number)?: return number.literal
        default: return nil
        }
    }
}
