/// A dictionary kept as two arrays in ascending key order.
///
/// Profile maps are small (a dozen traits, a few consent categories, a handful of event names):
/// for them binary search beats hashing, iteration is already in the canonical order encodings
/// need, and decoding fills two arrays instead of building a hash table.
public struct SortedDictionary<Key: Comparable & Hashable & Sendable, Value: Sendable>: Sendable {
    public private(set) var keys: [Key] = []
    public private(set) var values: [Value] = []

    public init() {}

    /// From pairs whose keys are strictly ascending; nil if they are not.
    public init?(ascending keys: [Key], _ values: [Value]) {
        guard keys.count == values.count, zip(keys, keys.dropFirst()).allSatisfy({ $0 < $1 }) else { return nil }
        self.keys = keys
        self.values = values
    }

    public init(_ dictionary: [Key: Value]) {
        keys = dictionary.keys.sorted()
        values = keys.map { dictionary[$0]! }
    }

    public var count: Int { keys.count }
    public var isEmpty: Bool { keys.isEmpty }

    /// The position of `key`, or where it would be inserted.
    @inlinable
    public func position(of key: Key) -> (index: Int, found: Bool) {
        var low = 0, high = keys.count
        while low < high {
            let mid = (low + high) >> 1
            if keys[mid] < key { low = mid + 1 } else { high = mid }
        }
        return (low, low < keys.count && keys[low] == key)
    }

    public subscript(key: Key) -> Value? {
        get {
            let (index, found) = position(of: key)
            return found ? values[index] : nil
        }
        set {
            let (index, found) = position(of: key)
            switch (found, newValue) {
            case (true, let value?): values[index] = value
            case (true, nil):
                keys.remove(at: index)
                values.remove(at: index)
            case (false, let value?):
                keys.insert(key, at: index)
                values.insert(value, at: index)
            case (false, nil): break
            }
        }
    }

    /// Updates the value at `key` in place, inserting `defaultValue` first if absent.
    public mutating func update(_ key: Key, default defaultValue: @autoclosure () -> Value, _ change: (inout Value) -> Void) {
        let (index, found) = position(of: key)
        if !found {
            keys.insert(key, at: index)
            values.insert(defaultValue(), at: index)
        }
        change(&values[index])
    }

    /// (key, value) pairs in ascending key order.
    public var pairs: Zip2Sequence<[Key], [Value]> { zip(keys, values) }

    public mutating func removeAll(where shouldRemove: (Key, Value) -> Bool) {
        var keptKeys: [Key] = [], keptValues: [Value] = []
        for (key, value) in pairs where !shouldRemove(key, value) {
            keptKeys.append(key)
            keptValues.append(value)
        }
        keys = keptKeys
        values = keptValues
    }
}

extension SortedDictionary: Equatable where Value: Equatable {}
