/// The messages the sealed-layout-1 fixture (Fixtures/sealed-layout-1) was written from.
let layoutOneFixtureMessages = [
    #"{"type":"identify","messageId":"m-1","userId":"user-1","anonymousId":"anon-1","timestamp":"2025-10-01T10:00:00Z","traits":{"email":"one@example.com","city":"Oslo","plan":"gold"},"context":{"consent":{"categoryPreferences":{"Advertising":true,"Analytics":false}}}}"#,
    #"{"type":"track","messageId":"m-2","userId":"user-1","event":"Order Completed","timestamp":"2025-10-01T10:05:00Z","properties":{"note":"first","revenue":12.5}}"#,
    #"{"type":"track","messageId":"m-3","anonymousId":"anon-1","event":"Product Viewed","timestamp":"2025-10-01T09:55:00Z","properties":{"sku":"A-1"}}"#,
    #"{"type":"alias","messageId":"m-4","userId":"user-1","previousId":"old-user-1","timestamp":"2025-10-01T10:06:00Z"}"#,
    #"{"type":"identify","messageId":"m-5","userId":"user-2","timestamp":"2025-10-02T08:00:00Z","traits":{"email":"two@example.com","name":"Two"}}"#,
    #"{"type":"page","messageId":"m-6","userId":"user-2","name":"Home","timestamp":"2025-10-02T08:01:00Z","properties":{"path":"/"}}"#,
    #"{"type":"group","messageId":"m-7","userId":"user-2","groupId":"acme","timestamp":"2025-10-02T08:02:00Z","traits":{"name":"Acme"}}"#,
    #"{"type":"identify","messageId":"m-8","userId":"erased-user","anonymousId":"anon-erased","timestamp":"2025-10-02T09:00:00Z","traits":{"email":"gone@example.com"}}"#,
    #"{"type":"track","messageId":"m-9","userId":"erased-user","event":"Signed Up","timestamp":"2025-10-02T09:01:00Z"}"#,
    #"{"type":"identify","messageId":"m-10","anonymousId":"anon-3","timestamp":"2025-10-03T07:00:00Z","traits":{"city":"Bergen"}}"#,
    #"{"type":"track","messageId":"m-11","userId":"user-1","event":"Order Completed","timestamp":"2025-10-03T10:05:00Z","properties":{"revenue":30}}"#,
    #"{"type":"identify","messageId":"m-12","userId":"user-2","anonymousId":"anon-2","timestamp":"2025-10-03T11:00:00Z","traits":{"plan":"silver"},"context":{"consent":{"categoryPreferences":{"Analytics":true}}}}"#,
]
