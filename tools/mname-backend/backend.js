/*
 * A node-mname backend for bbal's interoperability tests: a DNS server
 * built on the real mname library, reached only through
 * server.listenBalancer(), as in Binder.
 *
 *     node backend.js SOCKET_PATH NAME [UDP_PORT]
 *
 * With UDP_PORT it also serves DNS over UDP on 127.0.0.1:UDP_PORT, so
 * that a benchmark can ask it directly, without a balancer.
 *
 * TXT queries are answered with "client=ADDR:PORT" (the client address the
 * balancer reported), "backend=NAME" and "proto=udp|tcp"; A queries with
 * 192.0.2.1. Like Binder, it removes a stale socket at start-up and unlinks
 * its socket on SIGTERM. It prints "ready" once it listens.
 */
'use strict';

var fs = require('fs');
var bunyan = require('bunyan');
var mname = require('mname');

var sockPath = process.argv[2];
var name = process.argv[3] || 'mname';
var udpPort = process.argv[4] ? parseInt(process.argv[4], 10) : 0;
if (!sockPath) {
	console.error('usage: node backend.js SOCKET_PATH NAME');
	process.exit(2);
}

var log = bunyan.createLogger({
	name: 'mname-backend',
	level: process.env.MNAME_LOG_LEVEL || 'warn',
	stream: process.stderr
});
var server = mname.createServer({ log: log });

/*
 * Names under cache.test have TTLs, for the answer cache's tests: TXT
 * queries get "backend=NAME" and "served=N" (the queries this process
 * has answered so far, so that an answer from the cache shows an old N)
 * with TTL 60; big.cache.test gets 20 records of 20 bytes more, about
 * 1000 bytes in all: too many for 512 bytes, not for EDNS's 1232; nx*.cache.test is NXDOMAIN, with an SOA of TTL
 * 300 and minimum 5.
 */
var served = 0;

function answerCacheTest(query, qname) {
	var lname = qname.toLowerCase().replace(/\.$/, '');
	if (lname.indexOf('nx') === 0) {
		query.setError('nxdomain');
		query.addAuthority('cache.test', new mname.SOARecord(
		    'ns.cache.test', { admin: 'admin.cache.test', serial: 1,
		    refresh: 60, retry: 60, expire: 600, ttl: 5 }), 300);
		return;
	}
	if (query.type() !== 'TXT') {
		query.setError('nxdomain');
		return;
	}
	query.addAnswer(qname, new mname.TXTRecord('backend=' + name), 60);
	query.addAnswer(qname, new mname.TXTRecord('served=' + served), 60);
	if (lname === 'big.cache.test') {
		for (var i = 0; i < 20; i++) {
			query.addAnswer(qname, new mname.TXTRecord('padding-' + i +
			    '-0123456789'), 60);
		}
	}
}

server.on('query', function (query, done) {
	var qname = query.name();
	served++;
	if (/(^|\.)cache\.test\.?$/i.test(qname)) {
		answerCacheTest(query, qname);
		query.respond();
		done();
		return;
	}
	switch (query.type()) {
	case 'TXT':
		query.addAnswer(qname, new mname.TXTRecord('client=' +
		    query.src.address + ':' + query.src.port), 0);
		query.addAnswer(qname, new mname.TXTRecord('backend=' + name), 0);
		query.addAnswer(qname, new mname.TXTRecord('proto=' +
		    query.src.family), 0);
		break;
	case 'A':
		query.addAnswer(qname, new mname.ARecord('192.0.2.1'), 0);
		break;
	default:
		break;
	}
	query.respond();
	done();
});

function unlinkSocket() {
	try {
		fs.unlinkSync(sockPath);
	} catch (err) {
		if (err.code !== 'ENOENT')
			throw (err);
	}
}

unlinkSocket();
server.listenBalancer({ path: sockPath }, function () {
	if (!udpPort) {
		console.log('ready');
		return;
	}
	server.listenUdp({ port: udpPort, address: '127.0.0.1',
	    family: 'udp4' }, function () {
		console.log('ready');
	});
});

process.on('SIGTERM', function () {
	unlinkSocket();
	process.exit(0);
});
