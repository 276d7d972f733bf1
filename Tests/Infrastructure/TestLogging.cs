using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace Rbs.Tests.Infrastructure;

/// <summary>Writes a timestamped line to the test's output; drops it once the test has finished.</summary>
internal static class TestLog
{
    public static void Write(ITestOutputHelper output, string line)
    {
        try
        {
            output.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} {line}");
        }
        catch (InvalidOperationException)
        {
            // xunit refuses output after its test finished; late background lines have nowhere to go.
        }
    }

    public static string Format(string prefix, LogLevel level, string category, EventId eventId, string message, Exception? exception) =>
        $"{prefix}{level.ToString()[..4]} {category[(category.LastIndexOf('.') + 1)..]}[{eventId.Id}] {message}" +
        (exception is null ? string.Empty : Environment.NewLine + exception);
}

/// <summary>
/// Routes a host's logs to the test's output, so a failing test shows what the component did. RBS categories
/// log from <paramref name="minimumLevel"/>, framework categories from Information (Warning for noisy ones);
/// RBS event ids are counted so tests can assert on them.
/// </summary>
internal sealed class TestOutputLoggerProvider(ITestOutputHelper output, string prefix = "", LogLevel minimumLevel = LogLevel.Debug)
    : ILoggerProvider
{
    private readonly ConcurrentDictionary<int, int> _eventCounts = new();
    private readonly string _prefix = prefix.Length == 0 ? string.Empty : $"[{prefix}] ";

    /// <summary>How often an RBS event id was logged.</summary>
    public int Count(int eventId) => _eventCounts.TryGetValue(eventId, out var n) ? n : 0;

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void Dispose()
    {
    }

    private bool IsEnabled(string category, LogLevel level) =>
        level != LogLevel.None && (category.StartsWith("Rbs.", StringComparison.Ordinal)
            || category.StartsWith("Microsoft.AspNetCore.Server.Kestrel", StringComparison.Ordinal)
                ? level >= minimumLevel
                : level >= (category.StartsWith("Microsoft.AspNetCore.Hosting", StringComparison.Ordinal)
                    || category.StartsWith("Microsoft.AspNetCore.Routing", StringComparison.Ordinal) ? LogLevel.Warning : LogLevel.Information));

    private void Write(string category, LogLevel level, EventId eventId, string message, Exception? exception)
    {
        if (category.StartsWith("Rbs.", StringComparison.Ordinal))
        {
            _eventCounts.AddOrUpdate(eventId.Id, 1, (_, n) => n + 1);
        }

        TestLog.Write(output, TestLog.Format(_prefix, level, category, eventId, message, exception));
    }

    private sealed class Logger(TestOutputLoggerProvider provider, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => provider.IsEnabled(category, logLevel);

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (IsEnabled(logLevel))
            {
                provider.Write(category, logLevel, eventId, formatter(state, exception), exception);
            }
        }
    }
}

/// <summary>An <see cref="ILogger{T}"/> for components built by hand in tests; <paramref name="onMessage"/> sees every message.</summary>
internal sealed class TestOutputLogger<T>(ITestOutputHelper output, Action<string>? onMessage = null) : ILogger<T>
{
    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        var message = formatter(state, exception);
        onMessage?.Invoke(message);
        TestLog.Write(output, TestLog.Format(string.Empty, logLevel, typeof(T).FullName ?? typeof(T).Name, eventId, message, exception));
    }
}
