using Rbs.Agent.Dashboard;

namespace Rbs.Tests.Agent.Dashboard;

/// <summary>The dashboard's per-command output tail (Agent/Dashboard/OutputTail.cs): a ring that keeps exactly the last bytes.</summary>
public sealed class OutputTailTests
{
    [Fact]
    public void KeepsExactlyTheLastBytesOfBothStreamsInOrderAcrossManyWraps()
    {
        const int Capacity = 1000;
        var tail = new OutputTail(Capacity);
        var random = new Random(12);
        var reference = new List<(bool Stdout, byte Value)>();
        long dropped = 0;
        for (var i = 0; i < 2000; i++)
        {
            var stdout = random.Next(3) != 0;
            var length = random.Next(10) == 0 ? Capacity : random.Next(0, 300);
            var data = new byte[length];
            random.NextBytes(data);
            var skipped = random.Next(5) == 0 ? random.Next(1, 50) : 0;
            tail.Add(stdout, data, skipped);
            dropped += skipped;
            reference.AddRange(data.Select(b => (stdout, b)));
            if (reference.Count > Capacity)
            {
                dropped += reference.Count - Capacity;
                reference.RemoveRange(0, reference.Count - Capacity);
            }

            if (i % 97 == 0 || i == 1999)
            {
                var kept = tail.Pieces().SelectMany(p => p.Data.ToByteArray().Select(b => (p.Stdout, b))).ToList();
                Assert.Equal(reference, kept);
                Assert.Equal(reference.Count, tail.Count);
                Assert.Equal(dropped, tail.DroppedBytes);
                Assert.DoesNotContain(tail.Pieces(), p => p.Data.IsEmpty);
            }
        }
    }

    [Fact]
    public void AnEmptyTailHasNoPiecesAndAFrameLargerThanTheRingIsRefused()
    {
        var tail = new OutputTail(16);
        Assert.Empty(tail.Pieces());
        tail.Add(stdout: true, [], dropped: 5);
        Assert.Empty(tail.Pieces());
        Assert.Equal(5, tail.DroppedBytes);
        Assert.Throws<ArgumentOutOfRangeException>(() => tail.Add(stdout: true, new byte[17], dropped: 0));
    }
}
