using Google.Protobuf;

namespace Rbs.Agent.Dashboard;

/// <summary>
/// The last bytes of one command's output, stdout and stderr interleaved as they came, in one ring allocated once:
/// keeping a 1 GiB stream's tail costs a copy of at most <c>capacity</c> bytes per frame and no allocation (a new
/// 64 KiB array per frame was ~6% of the agent's stream throughput). Not thread-safe: the command log's lock guards it.
/// </summary>
internal sealed class OutputTail(int capacity)
{
    // Pieces in the order they came (which stream, how many bytes); the first may have lost its head to the ring.
    private readonly Queue<(bool Stdout, int Length)> _pieces = new();
    private byte[]? _ring;
    private int _start;
    private int _count;
    private int _firstTrimmed;

    /// <summary>Bytes that left the tail (or never entered it).</summary>
    public long DroppedBytes { get; private set; }

    /// <summary>Bytes in the tail.</summary>
    public int Count => _count;

    /// <summary>Keeps <paramref name="data"/> (at most the capacity), forgetting the oldest bytes beyond the capacity.</summary>
    /// <param name="dropped">Bytes of the same output the caller left out before <paramref name="data"/>.</param>
    public void Add(bool stdout, ReadOnlySpan<byte> data, int dropped)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(data.Length, capacity);
        DroppedBytes += dropped;
        if (data.IsEmpty)
        {
            return;
        }

        _ring ??= new byte[capacity];
        // Writing past the end of the kept bytes overwrites exactly the oldest ones that are about to be forgotten.
        var end = (_start + _count) % capacity;
        var first = Math.Min(data.Length, capacity - end);
        data[..first].CopyTo(_ring.AsSpan(end));
        data[first..].CopyTo(_ring);
        _pieces.Enqueue((stdout, data.Length));
        _count += data.Length;

        var excess = _count - capacity;
        while (excess > 0)
        {
            var (_, length) = _pieces.Peek();
            var left = length - _firstTrimmed;
            var forgotten = Math.Min(left, excess);
            if (forgotten == left)
            {
                _pieces.Dequeue();
                _firstTrimmed = 0;
            }
            else
            {
                _firstTrimmed += forgotten;
            }

            _start = (_start + forgotten) % capacity;
            _count -= forgotten;
            DroppedBytes += forgotten;
            excess -= forgotten;
        }
    }

    /// <summary>The kept bytes as copies, one per piece, oldest first.</summary>
    public IEnumerable<(bool Stdout, ByteString Data)> Pieces()
    {
        var position = _start;
        var trimmed = _firstTrimmed;
        foreach (var (stdout, length) in _pieces)
        {
            var size = length - trimmed;
            trimmed = 0;
            var bytes = new byte[size];
            var first = Math.Min(size, capacity - position);
            _ring.AsSpan(position, first).CopyTo(bytes);
            _ring.AsSpan(0, size - first).CopyTo(bytes.AsSpan(first));
            position = (position + size) % capacity;
            yield return (stdout, UnsafeByteOperations.UnsafeWrap(bytes));
        }
    }
}
