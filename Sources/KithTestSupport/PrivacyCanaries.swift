/// A customer whose personal data are canaries: values that must never appear where the
/// policy withholds them (a denied purpose's reads, the audit, the logs).
public enum PrivacyCanaries {
    public static let values = ["ana.canary@example.com", "+44 7700 900123", "1984-05-02", "Canary Lane 7", "teal-canary"]

    /// Identifies `user_id:u-priv` with every canary, granting analytics and denying advertising.
    public static let identify = #"""
        {"userId":"u-priv","messageId":"p-1","timestamp":"2026-01-01T00:00:00Z",
         "traits":{"email":"ana.canary@example.com","phone":"+44 7700 900123","birthday":"1984-05-02","address":"Canary Lane 7",
                   "plan":"gold","favouriteColour":"teal-canary"},
         "context":{"consent":{"categoryPreferences":{"analytics":true,"advertising":false}}}}
        """#
}
