/// What a caller of the API may do.
public enum Role: String, Sendable, CaseIterable, Equatable {
    /// Reads profiles for its purposes.
    case reader
    /// Sends messages (with a write key) and nothing else.
    case ingest
    /// Operates the node: status, backup, membership, metrics; reads for its purposes.
    case admin
    /// Consent, erasure, restriction, export and audit; reads restricted profiles.
    case privacy
}

/// A caller of the read API: a service, named in the configuration with the purposes it may
/// read for.
public struct Principal: Sendable, Equatable {
    public var name: String
    public var role: Role
    public var purposes: [String]

    public init(name: String, role: Role, purposes: [String]) {
        self.name = name
        self.role = role
        self.purposes = purposes
    }
}

/// Why a field was not shown. Reason codes are part of the API (docs/privacy.md).
public enum WithholdReason: String, Sendable, Hashable {
    /// The customer restricted processing (GDPR Art. 18); only the privacy role sees the data.
    case restricted
    /// The customer denied a consent category the purpose needs.
    case consentDenied = "consent_denied"
    /// No decision for a consent category the purpose needs, and the purpose is opt-in.
    case consentUnknown = "consent_unknown"
    /// The policy does not let this purpose see the field's category.
    case purposeExcludesCategory = "purpose_excludes_category"
    /// The policy does not name the field and withholds unknown fields.
    case unknownField = "unknown_field"
}

/// One field held back from a response: its name and why — never its value.
public struct Withheld: Sendable, Hashable {
    public var field: String
    public var reason: WithholdReason
    public var category: String?
    /// The consent category that decided it, for the consent reasons.
    public var consentCategory: String?

    public init(field: String, reason: WithholdReason, category: String? = nil, consentCategory: String? = nil) {
        self.field = field
        self.reason = reason
        self.category = category
        self.consentCategory = consentCategory
    }
}

public enum FieldDecision: Sendable, Equatable {
    case allow
    case mask(MaskRule)
    case withhold(Withheld)
}

/// The consent that bears on a read: each policy category's decision (absent: never
/// collected), the name each was decided under, the names the policy does not map, and whether
/// processing is restricted.
public struct ConsentState: Sendable, Equatable {
    public var decisions: [String: Bool]
    /// Category → the name its decision came under (`Advertising`, `ad_storage`).
    public var decidedBy: [String: String]
    /// Names decisions came under that resolve to no category: kept, shown, never applied.
    public var unmapped: [String]
    public var restricted: Bool

    public init(decisions: [String: Bool] = [:], decidedBy: [String: String] = [:], unmapped: [String] = [], restricted: Bool = false) {
        self.decisions = decisions
        self.decidedBy = decidedBy
        self.unmapped = unmapped
        self.restricted = restricted
    }
}

/// Why a read is refused before any field is looked at.
public enum ReadRefusal: Error, Equatable {
    /// The request names no purpose and the principal holds more than one.
    case purposeRequired
    /// The policy has no such purpose.
    case unknownPurpose(String)
    /// The principal may not read for this purpose.
    case purposeNotHeld(String)
}

/// The decisions for one read: a policy, a purpose, a principal and the profile's consent.
/// Everything that does not depend on the field is settled once, here; `decide` is then a lookup.
public struct ReadDecision: Sendable {
    public let purposeName: String
    let policy: Policy
    private let rules: PurposeRules
    /// Set when the whole profile is withheld (restriction or consent), with the reason.
    let blanket: Withheld?

    /// The purpose is the one requested, or the principal's only purpose.
    public init(policy: Policy, principal: Principal, requestedPurpose: String?, consent: ConsentState) throws(ReadRefusal) {
        let name = try Self.purpose(policy: policy, principal: principal, requested: requestedPurpose)
        self.purposeName = name
        self.policy = policy
        self.rules = policy.rules[name]!
        self.blanket = Self.blanket(purpose: policy.purposes[name]!, role: principal.role, consent: consent)
    }

    /// The purpose a read is for, checked against the policy and the principal (before the
    /// profile is even looked up, so a refusal says nothing about whether it exists).
    public static func purpose(policy: Policy, principal: Principal, requested: String?) throws(ReadRefusal) -> String {
        guard let name = requested ?? (principal.purposes.count == 1 ? principal.purposes[0] : nil) else {
            throw .purposeRequired
        }
        guard policy.purposes[name] != nil else { throw .unknownPurpose(name) }
        guard principal.purposes.contains(name) else { throw .purposeNotHeld(name) }
        return name
    }

    private static func blanket(purpose: Purpose, role: Role, consent: ConsentState) -> Withheld? {
        if consent.restricted && role != .privacy { return Withheld(field: "", reason: .restricted) }
        for category in purpose.consent {
            switch consent.decisions[category] {
            case true?: continue
            case false?: return Withheld(field: "", reason: .consentDenied, consentCategory: category)
            case nil where purpose.unknownConsent == .optIn: return Withheld(field: "", reason: .consentUnknown, consentCategory: category)
            case nil: continue
            }
        }
        return nil
    }

    /// Whether anything at all may be shown.
    public var withholdsEverything: Bool { blanket != nil }

    public func decide(_ field: String) -> FieldDecision {
        let rule = rules.rule(for: field)
        if var blanket {
            blanket.field = field
            blanket.category = rule?.category
            return .withhold(blanket)
        }
        guard let rule else { return .withhold(Withheld(field: field, reason: .unknownField)) }
        switch rule.access {
        case .allow: return .allow
        case .mask: return .mask(policy.masks[field] ?? .redact)
        case .withhold: return .withhold(Withheld(field: field, reason: .purposeExcludesCategory, category: rule.category))
        }
    }
}
