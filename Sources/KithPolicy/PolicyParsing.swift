import KithJSON
import KithProfile

extension Policy {
    /// Data categories when a policy does not declare its own.
    public static let defaultCategories = ["contact", "demographic", "behavioral", "financial", "sensitive", "identity"]

    /// Categories of Segment's reserved traits and of Kith's own fields, used unless a policy
    /// maps the field itself. A default whose category the policy does not declare is dropped.
    public static let defaultFields: [String: String] = {
        var fields: [String: String] = [:]
        for trait in ["email", "phone", "address", "name", "firstName", "lastName", "username", "avatar"] {
            fields["traits." + trait] = "contact"
        }
        for trait in ["birthday", "age", "gender", "company", "title", "website", "description"] {
            fields["traits." + trait] = "demographic"
        }
        fields["traits.createdAt"] = "behavioral"
        fields["traits.id"] = "identity"
        fields["identifiers.email"] = "contact"
        fields["identifiers.phone"] = "contact"
        for kind in ["user_id", "anonymous_id", "device_id"] { fields["identifiers." + kind] = "identity" }
        fields["events"] = "behavioral"
        fields["aggregates"] = "behavioral"
        fields["groups"] = "behavioral"
        fields["revenue"] = "financial"
        return fields
    }()

    public static let defaultMasks: [String: MaskRule] = [
        "traits.email": .email, "identifiers.email": .email, "traits.phone": .lastTwoDigits, "identifiers.phone": .lastTwoDigits,
        "traits.birthday": .yearOnly,
    ]

    /// Parses and validates a policy document.
    public init(parsing bytes: [UInt8]) throws(PolicyError) {
        let json: JSONValue
        do { json = try JSONParser.parse(bytes) } catch { throw PolicyError("", "\(error)") }
        try self.init(json: json)
    }

    public init(json: JSONValue) throws(PolicyError) {
        guard case .object(let root) = json else { throw PolicyError("", "a policy is a JSON object") }
        try Self.refuseUnknownKeys(
            root, "", ["version", "categories", "fields", "unknownFields", "consentCategories", "purposes", "masks", "retention"])
        guard root["version"] == .number(JSONNumber(1)) else { throw PolicyError("version", "must be 1") }
        let categories =
            try root["categories"].map { value throws(PolicyError) in try Self.strings(value, "categories") }
            ?? Self.defaultCategories
        guard !categories.isEmpty, Set(categories).count == categories.count else {
            throw PolicyError("categories", "must be a non-empty list without repeats")
        }
        let declared = Set(categories)
        var fields = Self.defaultFields.filter { declared.contains($0.value) }
        for (field, value) in try Self.members(root["fields"], "fields") {
            guard let category = value.stringValue, declared.contains(category) else {
                throw PolicyError("fields.\(field)", "must name a declared category")
            }
            guard Self.isFieldPath(field) else { throw PolicyError("fields.\(field)", Self.fieldPathHelp) }
            fields[field] = category
        }
        let unknownFields = try Self.unknownFieldRule(root["unknownFields"], declared)
        var consentCategories: [String: ConsentMapping] = [:]
        for (name, value) in try Self.members(root["consentCategories"], "consentCategories") {
            guard !name.hasPrefix(ConsentDecision.reservedPrefix) else {
                throw PolicyError("consentCategories.\(name)", "names starting with \(ConsentDecision.reservedPrefix) are Kith's own")
            }
            consentCategories[name] = try Self.consentMapping(value, "consentCategories.\(name)")
        }
        if let name = ConsentVocabulary(consentCategories).conflicts.first {
            throw PolicyError("consentCategories", "\"\(name)\" names two categories (names and aliases are compared without case)")
        }
        var purposes: [String: Purpose] = [:]
        for (name, value) in try Self.members(root["purposes"], "purposes") {
            purposes[name] = try Self.purpose(value, "purposes.\(name)", declared, Set(consentCategories.keys))
        }
        guard !purposes.isEmpty else { throw PolicyError("purposes", "a policy needs at least one purpose") }
        var masks = Self.defaultMasks
        for (field, value) in try Self.members(root["masks"], "masks") {
            guard let rule = value.stringValue.flatMap(MaskRule.init(rawValue:)) else {
                throw PolicyError("masks.\(field)", "must be one of " + MaskRule.allCases.map(\.rawValue).joined(separator: ", "))
            }
            guard Self.isFieldPath(field) else { throw PolicyError("masks.\(field)", Self.fieldPathHelp) }
            masks[field] = rule
        }
        self.init(
            categories: categories, fields: fields, unknownFields: unknownFields, consentCategories: consentCategories,
            purposes: purposes, masks: masks)
        retention = try Self.retention(
            root["retention"], fields: fields, unknownFields: unknownFields, declared: declared, purposes: Set(purposes.keys),
            vocabulary: consentVocabulary)
    }

    static let fieldPathHelp = "a field is traits.NAME, identifiers.KIND (a built-in or custom kind), events, aggregates, groups or revenue"

    static func isFieldPath(_ field: String) -> Bool {
        if ["events", "aggregates", "groups", "revenue"].contains(field) { return true }
        if field.hasPrefix("traits.") { return field.count > "traits.".count }
        if field.hasPrefix("identifiers.") {
            // A person's kind: built in, or a custom kind's name (`identifiers.loyalty_card`).
            guard let kind = IdentifierKind(name: String(field.dropFirst(12))) else { return false }
            return kind != .groupId
        }
        return false
    }

    private static func unknownFieldRule(_ value: JSONValue?, _ declared: Set<String>) throws(PolicyError) -> UnknownFieldRule {
        guard let value else { return declared.contains("sensitive") ? .category("sensitive") : .withhold }
        guard let text = value.stringValue, text == "withhold" || declared.contains(text) else {
            throw PolicyError("unknownFields", "must be \"withhold\" or a declared category")
        }
        return text == "withhold" ? .withhold : .category(text)
    }

    private static func consentMapping(_ value: JSONValue, _ path: String) throws(PolicyError) -> ConsentMapping {
        guard case .object(let object) = value else { throw PolicyError(path, "must be an object") }
        try refuseUnknownKeys(object, path, ["aliases", "tcf", "googleConsentMode"])
        let aliases = try object["aliases"].map { value throws(PolicyError) in try strings(value, path + ".aliases") } ?? []
        for alias in aliases where alias.isEmpty || alias.utf8.count > 100 || alias.hasPrefix(ConsentDecision.reservedPrefix) {
            throw PolicyError(path + ".aliases", "an alias is 1 to 100 bytes and does not start with \(ConsentDecision.reservedPrefix)")
        }
        var tcf: [Int] = []
        if let list = object["tcf"] {
            guard case .array(let items) = list else { throw PolicyError(path + ".tcf", "must be a list of TCF purpose ids") }
            for item in items {
                guard case .number(let number) = item, let id = Int(number.literal), (1...11).contains(id) else {
                    throw PolicyError(path + ".tcf", "TCF v2.2 purposes are numbered 1 to 11")
                }
                tcf.append(id)
            }
        }
        let modes = try object["googleConsentMode"].map { value throws(PolicyError) in try strings(value, path + ".googleConsentMode") } ?? []
        for mode in modes where !ConsentMapping.googleConsentModeTypes.contains(mode) {
            throw PolicyError(path + ".googleConsentMode", "\"\(mode)\" is not a Google Consent Mode type")
        }
        return ConsentMapping(tcfPurposes: tcf, googleConsentMode: modes, aliases: aliases)
    }

    private static func purpose(_ value: JSONValue, _ path: String, _ declared: Set<String>, _ consentNames: Set<String>) throws(PolicyError)
        -> Purpose
    {
        guard case .object(let object) = value else { throw PolicyError(path, "must be an object") }
        try refuseUnknownKeys(object, path, ["consent", "unknownConsent", "categories"])
        let consent = try object["consent"].map { value throws(PolicyError) in try strings(value, path + ".consent") } ?? []
        for name in consent where !consentNames.contains(name) {
            throw PolicyError(path + ".consent", "\"\(name)\" is not in consentCategories")
        }
        var unknownConsent = UnknownConsent.optIn
        if let text = object["unknownConsent"] {
            guard let rule = text.stringValue.flatMap(UnknownConsent.init(rawValue:)) else {
                throw PolicyError(path + ".unknownConsent", "must be \"opt-in\" or \"opt-out\"")
            }
            unknownConsent = rule
        }
        var access: [String: Access] = [:]
        for (category, value) in try members(object["categories"], path + ".categories") {
            guard declared.contains(category) else { throw PolicyError("\(path).categories.\(category)", "is not a declared category") }
            guard let rule = value.stringValue.flatMap(Access.init(rawValue:)) else {
                throw PolicyError("\(path).categories.\(category)", "must be allow, mask or withhold")
            }
            access[category] = rule
        }
        return Purpose(consent: consent, unknownConsent: unknownConsent, access: access)
    }

    private static func members(_ value: JSONValue?, _ path: String) throws(PolicyError) -> [(String, JSONValue)] {
        guard let value else { return [] }
        guard case .object(let object) = value else { throw PolicyError(path, "must be an object") }
        // Keys are unique: the JSON parser refuses duplicates.
        return object.members.map { ($0.key, $0.value) }
    }

    static func strings(_ value: JSONValue, _ path: String) throws(PolicyError) -> [String] {
        guard case .array(let items) = value else { throw PolicyError(path, "must be a list of strings") }
        var result: [String] = []
        for item in items {
            guard let text = item.stringValue, !text.isEmpty else { throw PolicyError(path, "must be a list of non-empty strings") }
            result.append(text)
        }
        return result
    }

    static func refuseUnknownKeys(_ object: JSONObject, _ path: String, _ known: Set<String>) throws(PolicyError) {
        if let unknown = object.members.first(where: { !known.contains($0.key) }) {
            throw PolicyError(path.isEmpty ? unknown.key : "\(path).\(unknown.key)", "is not a policy setting")
        }
    }
}
