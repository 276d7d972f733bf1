using System.Globalization;
using Microsoft.Extensions.Options;

namespace Rbs.Gateway.Hosting;

/// <summary>
/// The gateway's managed heap: <see cref="ApplyLimit"/> makes <see cref="GatewayOptions.HeapLimit"/> the runtime's GC
/// heap hard limit (rbs-gateway only; in-process test hosts share their process and leave it alone), and
/// <see cref="HasRoomForStream"/> is the admission rule that keeps new streams waiting while the heap is near the limit in
/// force, that one or the runtime's own (75% of a container's memory limit), so a full gateway holds new streams back
/// instead of failing the ones in flight with OutOfMemoryException (docs/limits.md, "Gateway memory").
/// </summary>
internal sealed partial class GatewayHeap(IOptions<GatewayOptions> options, TimeProvider timeProvider, ILogger<GatewayHeap> logger)
{
    /// <summary>Operator settings of the runtime's own that win over <see cref="GatewayOptions.HeapLimit"/>.</summary>
    private static readonly string[] s_runtimeLimitVariables = ["DOTNET_GCHeapHardLimit", "DOTNET_GCHeapHardLimitPercent"];

    /// <summary>A stream waiting for room re-checks this often (the heap size is only known as of the last collection).</summary>
    private static readonly TimeSpan s_recheckInterval = TimeSpan.FromMilliseconds(100);

    /// <summary>While streams wait, a full collection refreshes the heap's size at most this often (the gateway may be idle otherwise).</summary>
    private static readonly TimeSpan s_collectInterval = TimeSpan.FromSeconds(1);

    private long _lastCollect;

    /// <summary>
    /// Sets the GC heap hard limit from <c>Gateway:HeapLimit</c> before anything big is allocated. Returns what was done,
    /// for the startup log. An invalid value is left to the options validation, which refuses to start with the reason.
    /// </summary>
    public static string ApplyLimit(IConfiguration configuration)
    {
        var configured = configuration[$"{GatewayOptions.SectionName}:{nameof(GatewayOptions.HeapLimit)}"];
        long limit = 0;
        if (!string.IsNullOrEmpty(configured) && !long.TryParse(configured, NumberStyles.None, CultureInfo.InvariantCulture, out limit))
        {
            return "the runtime's (Gateway:HeapLimit is not a number)";
        }

        if (s_runtimeLimitVariables.FirstOrDefault(v => !string.IsNullOrEmpty(Environment.GetEnvironmentVariable(v))) is { } variable)
        {
            return $"the runtime's ({variable} is set)";
        }

        if (limit < GatewayOptions.MinHeapLimit)
        {
            return limit == 0 ? "the runtime's (Gateway:HeapLimit is 0)" : "none (Gateway:HeapLimit is below its minimum)";
        }

        var available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (limit >= available)
        {
            return $"the runtime's ({available / (1024 * 1024)} MiB, below Gateway:HeapLimit)";
        }

        AppContext.SetData("GCHeapHardLimit", (ulong)limit);
        GC.RefreshMemoryLimit();
        return $"{limit / (1024 * 1024)} MiB (Gateway:HeapLimit)";
    }

    /// <summary>Logs the heap limit in force once the host's logging exists.</summary>
    public void LogLimit(string applied) => Log.HeapLimit(logger, applied, GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / (1024 * 1024));

    /// <summary>
    /// The heap as of the last collection and the most it may use (the hard limit in force, else the machine's or the
    /// container's memory). Tests replace it to stand for a full heap.
    /// </summary>
    internal Func<(long HeapBytes, long AvailableBytes)> Measure { get; set; } = static () =>
    {
        var info = GC.GetGCMemoryInfo();
        return (info.HeapSizeBytes, info.TotalAvailableMemoryBytes);
    };

    /// <summary>The most the heap may use, in MiB (for messages).</summary>
    public long AvailableMiB => Measure().AvailableBytes / (1024 * 1024);

    /// <summary>
    /// True while the heap, as of the last collection, is below the admission threshold:
    /// <see cref="GatewayOptions.StreamAdmissionHeapPercent"/> of what the heap may use. Both figures come from one measurement.
    /// </summary>
    public bool HasRoomForStream(out long heapBytes, out long thresholdBytes)
    {
        (heapBytes, var available) = Measure();
        thresholdBytes = available / 100 * options.Value.StreamAdmissionHeapPercent;
        return heapBytes < thresholdBytes;
    }

    /// <summary>
    /// Waits until <see cref="HasRoomForStream"/> holds; the caller bounds the wait. The heap's size is known only as
    /// of the last collection, so a waiting gateway that allocates little runs one (at most once per second) rather
    /// than wait on a stale figure.
    /// </summary>
    public async Task WaitForRoomAsync(CancellationToken cancellationToken)
    {
        while (!HasRoomForStream(out var heap, out _))
        {
            var now = timeProvider.GetTimestamp();
            var last = Interlocked.Read(ref _lastCollect);
            if ((last == 0 || timeProvider.GetElapsedTime(last, now) >= s_collectInterval) && Interlocked.CompareExchange(ref _lastCollect, now, last) == last)
            {
                Log.CollectingForRoom(logger, heap / (1024 * 1024));
                GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
                continue;
            }

            await Task.Delay(s_recheckInterval, timeProvider, cancellationToken);
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 190, Level = LogLevel.Information, Message = "GC heap limit: {Applied}; the heap may use {Available} MiB")]
        public static partial void HeapLimit(ILogger logger, string applied, long available);

        [LoggerMessage(EventId = 191, Level = LogLevel.Debug, Message = "Streams wait for heap room ({Heap} MiB after the last collection); collecting")]
        public static partial void CollectingForRoom(ILogger logger, long heap);
    }
}
