import KithCRDT
import KithJSON

/// The parts of a stored view that a read under the policy (`PolicyRenderer`) takes one at a
/// time: what it decides on field by field is walked or decoded here, and what it shows whole is
/// written straight from the bytes. Everything re-reads what `init` checked, so nothing fails.
extension EncodedProfileView {
    /// Each trait's name and JSON text, in the stored (ascending) order.
    public func forEachTrait(_ body: (_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) -> Void) {
        bytes.withUnsafeBufferPointer { text in
            var r = CheckedBytes(text, at: traitsAt)
            for _ in 0..<r.count() {
                let name = r.range()
                r.skipStamp()
                let value = r.range()
                body(r[name], r[value])
            }
        }
    }

    /// The consent registers under their names, reserved ones included, in the stored order.
    public var consentRegisters: [(name: String, register: ConsentRegister)] {
        bytes.withUnsafeBufferPointer { text in
            var r = CheckedBytes(text, at: consentAt)
            return (0..<r.count()).map { _ in
                let name = r.string()
                let granted = r.bool()
                let stamp = LWWStamp(time: r.signed(), tiebreak: r.string())
                return (name, ConsentRegister(granted: granted, stamp: stamp, source: r.string()))
            }
        }
    }

    /// The groups' live elements, in order (`ORSet.elements`).
    public var groupNames: [String] {
        bytes.withUnsafeBufferPointer { text in
            var r = CheckedBytes(text, at: groupsAt)
            return (0..<r.count()).map { _ in
                let name = r.string()
                for _ in 0..<r.count() { r.skipStamp() }
                return name
            }
        }
    }

    /// Whether any event's total carries revenue (`EventAggregate.revenueMicros` not zero).
    public var aggregatesHaveRevenue: Bool {
        bytes.withUnsafeBufferPointer { text in
            var r = CheckedBytes(text, at: aggregatesAt)
            for _ in 0..<r.count() {
                _ = r.range()
                _ = r.signed()
                if r.signed128() != 0 { return true }
            }
            return false
        }
    }

    /// Whether the recent events are none, and whether any of them carries revenue.
    public var recentEventsSummary: (isEmpty: Bool, haveRevenue: Bool) {
        bytes.withUnsafeBufferPointer { text in
            var r = CheckedBytes(text, at: recentAt)
            let count = r.count()
            for _ in 0..<count {
                _ = r.range()
                let typeByte = r.byte()
                _ = r.range()
                _ = r.signed()
                if typeByte & clientTimestampFlag != 0 { _ = r.signed() }
                _ = r.range()
                if r.optionalSigned() != nil { return (false, true) }
                _ = r.range()
            }
            return (count == 0, false)
        }
    }

    /// The recent events, decoded (for a read that shows them other than as stored).
    public var recentEvents: [EventRecord] {
        var reader = BinaryReader(bytes, at: recentAt)
        do {
            return try reader.readSequence(minimumItemSize: 8) { r in try EventRecord(from: &r) }
        } catch {
            preconditionFailure("EncodedProfileView's checked events do not decode: \(error)")
        }
    }

    /// `{"category":{"status":…,"time":…,"source":…},…}` as `JSONWriter.writeConsent` writes it.
    public func writeConsent(to output: inout JSONWriter) {
        bytes.withUnsafeBufferPointer { writeConsent($0, to: &output) }
    }

    /// The totals as `JSONWriter.writeAggregates` writes them, with revenue shown as `revenue` says.
    public func writeAggregates(revenue: JSONWriter.RevenueDisplay, to output: inout JSONWriter) {
        bytes.withUnsafeBufferPointer { writeAggregates($0, revenue: revenue, to: &output) }
    }

    /// The recent events as stored, each as `JSONWriter.writeEvent` writes it.
    public func writeEvents(to output: inout JSONWriter) {
        bytes.withUnsafeBufferPointer { writeEvents($0, to: &output) }
    }

    /// The encoding of `view`: how a view decoded for other reasons (retention applied, a change
    /// being delivered) is rendered by the same code as one read from the store.
    public init(encoding view: ProfileView) {
        do {
            try self.init(ProfileFormat.encode(view))
        } catch {
            preconditionFailure("a view's own encoding does not read back: \(error)")
        }
    }
}
