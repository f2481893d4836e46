import KithCRDT
import KithJSON

/// The parts of a stored view that a read under the policy (`PolicyRenderer`) takes one at a
/// time: what it decides on field by field is walked or decoded here, and what it shows whole is
/// written straight from the bytes. Everything re-reads what `init` checked, so nothing fails.
extension EncodedProfileView {
    /// Each trait's name and JSON text, in the stored (ascending) order.
    public func forEachTrait(_ body: (_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) -> Void) {
        bytes.withUnsafeBufferPointer { forEachTrait(in: $0, body) }
    }

    /// The consent registers under their names, reserved ones included, in the stored order.
    public var consentRegisters: [(name: String, register: ConsentRegister)] {
        bytes.withUnsafeBufferPointer { text in
            var registers: [(name: String, register: ConsentRegister)] = []
            forEachConsent(in: text) { consent in
                let stamp = LWWStamp(time: consent.time, tiebreak: String(decoding: consent.tiebreak, as: UTF8.self))
                let register = ConsentRegister(granted: consent.granted, stamp: stamp, source: String(decoding: consent.source, as: UTF8.self))
                registers.append((String(decoding: consent.name, as: UTF8.self), register))
            }
            return registers
        }
    }

    /// The groups' live elements, in order (`ORSet.elements`).
    public var groupNames: [String] {
        bytes.withUnsafeBufferPointer { text in
            var names: [String] = []
            forEachGroup(in: text) { names.append(String(decoding: $0, as: UTF8.self)) }
            return names
        }
    }

    /// Whether any event's total carries revenue (`EventAggregate.revenueMicros` not zero).
    public var aggregatesHaveRevenue: Bool {
        bytes.withUnsafeBufferPointer { text in
            var found = false
            forEachAggregate(in: text) { found = found || $0.revenue != 0 }
            return found
        }
    }

    /// Whether the recent events are none, and whether any of them carries revenue.
    public var recentEventsSummary: (isEmpty: Bool, haveRevenue: Bool) {
        bytes.withUnsafeBufferPointer { text in
            var summary = (isEmpty: true, haveRevenue: false)
            forEachEvent(in: text) { event in
                summary.isEmpty = false
                summary.haveRevenue = summary.haveRevenue || event.revenueMicros != nil
            }
            return summary
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
