import KithJSON
import KithProfile

/// What a store's privacy policy says: which category each profile field belongs to, what each
/// purpose may see of each category, which consent each purpose needs, and how masked values
/// are shown. Loaded from JSON (`Policy(parsing:)`, format in docs/privacy.md), validated whole:
/// a policy with one mistake is refused rather than half applied.
public struct Policy: Sendable, Equatable {
    /// Data categories, as the policy declares them (`contact`, `demographic`, ...).
    public var categories: [String]
    /// Field path (`traits.email`, `identifiers.email`, `events`, `revenue`) → category.
    public var fields: [String: String] { didSet { rules = Self.rules(fields, unknownFields, purposes) } }
    /// What a field the policy does not name is treated as.
    public var unknownFields: UnknownFieldRule { didSet { rules = Self.rules(fields, unknownFields, purposes) } }
    /// Consent category → its aliases and its equivalents in IAB TCF v2.2 and Google Consent Mode.
    public var consentCategories: [String: ConsentMapping] { didSet { consentVocabulary = ConsentVocabulary(consentCategories) } }
    /// How the names touchpoints send resolve to `consentCategories`, kept in step with them.
    public private(set) var consentVocabulary: ConsentVocabulary
    public var purposes: [String: Purpose] { didSet { rules = Self.rules(fields, unknownFields, purposes) } }
    /// Per purpose, each named field's category and the purpose's access to it, and the same
    /// for fields the policy does not name: a read's decision for a field is one lookup, not a
    /// lookup of its category and then of the access (a read decides a field per trait and
    /// per identifier kind). Derived from `fields`, `unknownFields` and `purposes`, kept in step.
    private(set) var rules: [String: PurposeRules] = [:]
    /// Field path → how its value is masked when a purpose sees its category masked.
    public var masks: [String: MaskRule]
    /// How long events and traits are kept, and for which purpose (`retention`; none: kept).
    public var retention = RetentionRules.none

    public init(
        categories: [String], fields: [String: String], unknownFields: UnknownFieldRule,
        consentCategories: [String: ConsentMapping], purposes: [String: Purpose], masks: [String: MaskRule]
    ) {
        self.categories = categories
        self.fields = fields
        self.unknownFields = unknownFields
        self.consentCategories = consentCategories
        consentVocabulary = ConsentVocabulary(consentCategories)
        self.purposes = purposes
        self.masks = masks
        rules = Self.rules(fields, unknownFields, purposes)
    }

    private static func rules(_ fields: [String: String], _ unknown: UnknownFieldRule, _ purposes: [String: Purpose]) -> [String: PurposeRules] {
        purposes.mapValues { purpose in
            func rule(_ category: String) -> FieldRule { FieldRule(category: category, access: purpose.access[category] ?? .withhold) }
            let unknownRule: FieldRule? = if case .category(let category) = unknown { rule(category) } else { nil }
            return PurposeRules(named: fields.mapValues(rule), unknown: unknownRule)
        }
    }

    /// The category of a field path.
    public func category(of field: String) -> String? {
        if let category = fields[field] { return category }
        if case .category(let category) = unknownFields { return category }
        return nil
    }
}

/// A field's category and what one purpose may see of it.
struct FieldRule: Sendable, Equatable {
    var category: String
    var access: Access
}

/// One purpose's rules: for each field the policy names, and for any other (nil: withheld).
struct PurposeRules: Sendable, Equatable {
    var named: [String: FieldRule]
    var unknown: FieldRule?

    func rule(for field: String) -> FieldRule? { named[field] ?? unknown }
}

/// The treatment of fields the policy does not name.
public enum UnknownFieldRule: Sendable, Equatable {
    /// Treated as this category (typically `sensitive`, so unknown data is shown only where
    /// sensitive data would be).
    case category(String)
    /// Never shown to any purpose.
    case withhold
}

/// How a purpose treats one data category.
public enum Access: String, Sendable, Equatable {
    case allow, mask, withhold
}

/// What a missing consent decision means for a purpose.
public enum UnknownConsent: String, Sendable, Equatable {
    /// Only an explicit grant permits the purpose (GDPR consent).
    case optIn = "opt-in"
    /// Permitted unless denied (e.g. CCPA-style opt-out).
    case optOut = "opt-out"
}

public struct Purpose: Sendable, Equatable {
    /// Consent categories that must all permit the read.
    public var consent: [String]
    public var unknownConsent: UnknownConsent
    /// Data category → access; categories not listed are withheld.
    public var access: [String: Access]

    public init(consent: [String], unknownConsent: UnknownConsent, access: [String: Access]) {
        self.consent = consent
        self.unknownConsent = unknownConsent
        self.access = access
    }
}

/// A consent category's other names (`ConsentVocabulary`), and its counterparts in the two
/// consent frameworks touchpoints most often speak.
public struct ConsentMapping: Sendable, Equatable {
    /// Names touchpoints send for this category (`Advertising`, `C0004`), compared without case.
    public var aliases: [String]
    /// IAB TCF v2.2 purpose ids (1–11).
    public var tcfPurposes: [Int]
    /// Google Consent Mode v2 types (`ad_storage`, `analytics_storage`, ...).
    public var googleConsentMode: [String]

    public init(tcfPurposes: [Int], googleConsentMode: [String], aliases: [String] = []) {
        self.aliases = aliases
        self.tcfPurposes = tcfPurposes
        self.googleConsentMode = googleConsentMode
    }

    public static let googleConsentModeTypes: Set<String> = [
        "ad_storage", "ad_user_data", "ad_personalization", "analytics_storage", "functionality_storage",
        "personalization_storage", "security_storage",
    ]
}

/// How a masked value is shown.
public enum MaskRule: String, Sendable, Equatable, CaseIterable {
    /// `alice@example.com` → `a***@example.com`.
    case email
    /// Every digit but the last two replaced: `+44 7700 900123` → `+** **** ****23`.
    case lastTwoDigits = "last-two-digits"
    /// A date keeps its year only: `1984-05-02` → `1984`.
    case yearOnly = "year-only"
    /// The value is replaced by `"***"`: the reader learns only that there is one.
    case redact
}

/// Why a policy file was refused: the JSON path of the problem and what is wrong there.
public struct PolicyError: Error, Equatable, CustomStringConvertible {
    public var path: String
    public var message: String

    public init(_ path: String, _ message: String) {
        self.path = path
        self.message = message
    }

    public var description: String { path.isEmpty ? message : "\(path): \(message)" }
}
